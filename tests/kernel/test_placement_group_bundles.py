"""The raylet's bundle table: prepare/commit/release, whole effect lists, and what a
committed bundle does to leases (its resources can be leased; releasing it ends them)."""

from __future__ import annotations

from shoal.kernel.gcs.placement_group_protocol import (
    BundlesCommitted,
    BundleSpec,
    BundlesPrepared,
    BundlesReleased,
    CommitBundles,
    PrepareBundles,
    ReleaseBundles,
    group_shape,
)
from shoal.kernel.messages import Received, Rejected, Send
from shoal.kernel.raylet import Raylet
from shoal.kernel.raylet.protocol import KillWorker, LeasedWorkerDied

from tests.kernel.test_raylet_leases import (
    GCS,
    OWNER,
    granted,
    make_raylet,
    register,
    rejected,
    request,
    start,
    step,
    up,
    wid,
    worker,
)


def prepare(attempt: int = 1, *bundles: tuple[int, float], pg: str = "g1") -> Received:
    specs = tuple(BundleSpec(index=i, shape={"CPU": c}) for i, c in bundles or ((0, 2.0),))
    return Received(src=GCS, msg=PrepareBundles(pg_id=pg, attempt=attempt, bundles=specs))


def commit(attempt: int = 1, indexes: tuple[int, ...] = (0,), pg: str = "g1") -> Received:
    return Received(src=GCS, msg=CommitBundles(pg_id=pg, attempt=attempt, indexes=indexes))


def release(attempt: int = 1, indexes: tuple[int, ...] = (), pg: str = "g1") -> Received:
    return Received(src=GCS, msg=ReleaseBundles(pg_id=pg, attempt=attempt, indexes=indexes,
                                                reason="removed"))


def prepared(ok: bool = True, reason: str = "", attempt: int = 1) -> Send:
    return Send(dst=GCS, msg=BundlesPrepared(pg_id="g1", attempt=attempt, ok=ok, reason=reason))


def committed(ok: bool = True, attempt: int = 1) -> Send:
    return Send(dst=GCS, msg=BundlesCommitted(pg_id="g1", attempt=attempt, ok=ok))


def ledger(raylet: Raylet) -> tuple[dict[str, int], dict[str, int]]:
    return dict(raylet.leases.ledger.total), dict(raylet.leases.ledger.available)


def test_prepare_reserves_from_the_pool_and_commit_adds_the_group_resources() -> None:
    raylet = make_raylet({"CPU": 4.0})
    assert step(raylet, prepare()) == [prepared()]
    assert ledger(raylet) == ({"CPU": 40_000}, {"CPU": 20_000})
    assert step(raylet, prepare()) == [prepared()]  # a retransmit: held already
    assert step(raylet, commit()) == [committed()]
    total, available = ledger(raylet)
    assert total == available | {"CPU": 40_000}
    assert available["CPU_group_0_g1"] == available["CPU_group_g1"] == 20_000
    assert available["bundle_group_0_g1"] == 10_000_000
    assert step(raylet, commit()) == [committed()]  # idempotent
    assert raylet.bundles.bundles == (("g1", 0, 1, True),)


def test_prepare_is_all_or_nothing() -> None:
    raylet = make_raylet({"CPU": 4.0})
    out = step(raylet, prepare(1, (0, 2.0), (1, 3.0)))
    assert out == [prepared(False, "it has {CPU: 4} free, and the bundles need {CPU: 5}")]
    assert ledger(raylet) == ({"CPU": 40_000}, {"CPU": 40_000})
    assert raylet.bundles.bundles == ()


def test_only_the_gcs_may_reserve() -> None:
    raylet = make_raylet({"CPU": 4.0})
    out = step(raylet, Received(src=OWNER, msg=prepare().msg))
    assert out == [Send(dst=OWNER, msg=Rejected(request_type="PrepareBundles", reason=(
        f"raylet 'n1': only the GCS reserves bundles, not {OWNER}")))]


def test_commit_of_a_bundle_not_held_is_refused() -> None:
    raylet = make_raylet({"CPU": 4.0})
    assert step(raylet, commit()) == [committed(ok=False)]


def test_a_task_in_the_bundle_is_leased_and_killed_when_the_bundle_is_released() -> None:
    raylet = make_raylet({"CPU": 4.0})
    step(raylet, prepare())
    shape = group_shape({"CPU": 1.0}, "g1", 0)
    assert step(raylet, request(1, shape)) == []  # fits nowhere yet: kept infeasible
    assert step(raylet, commit()) == [committed(), *start(1)]  # now it fits here
    assert step(raylet, register(1)) == [up(1), granted(1, 1, 1)]
    why = "its placement group 'g1' gave back its bundles on node 'n1' (removed)"
    out = step(raylet, release())
    assert out[:2] == [KillWorker(worker_id=wid(1), reason=why),
                       Send(dst=OWNER, msg=LeasedWorkerDied(
                           lease_id="n1.b1.l1", worker=worker(1), cause=why))]
    assert out[-1] == Send(dst=GCS, msg=BundlesReleased(pg_id="g1", attempt=1))
    assert ledger(raylet) == ({"CPU": 40_000}, {"CPU": 40_000})
    assert raylet.bundles.bundles == () and raylet.quiescence_problems() == []


def test_release_refuses_requests_waiting_for_the_group() -> None:
    raylet = make_raylet({"CPU": 1.0})
    step(raylet, prepare(1, (0, 1.0)))
    step(raylet, commit())
    shape = group_shape({"CPU": 1.0}, "g1", 0)
    step(raylet, request(1, shape))
    step(raylet, register(1))
    step(raylet, request(2, shape))  # queued behind the first: the bundle is busy
    why = "its placement group 'g1' gave back its bundles on node 'n1' (removed)"
    out = step(raylet, release())
    assert rejected(2, why) in out


def test_a_newer_prepare_replaces_an_older_attempt_and_a_stale_one_is_ignored() -> None:
    raylet = make_raylet({"CPU": 4.0})
    step(raylet, prepare(1, (0, 1.0)))
    assert step(raylet, prepare(2, (0, 2.0))) == [prepared(attempt=2)]
    assert raylet.bundles.bundles == (("g1", 0, 2, False),)
    assert step(raylet, prepare(1, (0, 1.0))) == []
    # A late release of attempt 1 leaves attempt 2 alone.
    assert step(raylet, release(1)) == [Send(dst=GCS, msg=BundlesReleased(pg_id="g1", attempt=1))]
    assert raylet.bundles.bundles == (("g1", 0, 2, False),)


def test_rollback_releases_only_the_indexes_named() -> None:
    raylet = make_raylet({"CPU": 4.0})
    step(raylet, prepare(1, (0, 1.0)))
    step(raylet, commit())
    step(raylet, prepare(2, (1, 1.0)))
    step(raylet, release(2, (1,)))
    assert raylet.bundles.bundles == (("g1", 0, 1, True),)


def test_a_removed_group_refuses_its_requests_waiting_here_and_later() -> None:
    raylet = make_raylet({"CPU": 4.0})
    shape = group_shape({"CPU": 1.0}, "g1", 0)
    assert step(raylet, request(1, shape)) == []  # no bundle here: kept infeasible
    why = "its placement group 'g1' gave back its bundles on node 'n1' (removed)"
    assert step(raylet, release(3)) == [
        rejected(1, why), Send(dst=GCS, msg=BundlesReleased(pg_id="g1", attempt=3))]
    assert step(raylet, request(2, shape)) == [rejected(2, (
        "its placement group 'g1' was removed; create a new group to run it in one"))]
    assert step(raylet, request(3, group_shape({"CPU": 1.0}, "g2", 0))) == []
