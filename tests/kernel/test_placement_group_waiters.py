"""GCS placement group manager: ``WaitPlacementGroupReady`` (``pg.wait()``), answered when
the group is created, when it is removed, or at the request's deadline; retransmits are
safe and no waiter outlives its answer."""

from __future__ import annotations

from typing import Any

import pytest
from shoal.kernel.gcs.placement_group_protocol import (
    WAIT_TIMEOUT_MAX_NS,
    BundlesCommitted,
    BundlesPrepared,
    CreatePlacementGroup,
    RemovePlacementGroup,
    WaitPlacementGroupReady,
)
from shoal.kernel.gcs.placement_group_records import PgManagerConfig
from shoal.kernel.gcs.placement_groups import PlacementGroupManager
from shoal.kernel.messages import Address, CancelTimer, SetTimer, StorePut

from tests.kernel.test_placement_groups import (
    DRIVER,
    Facts,
    S,
    create,
    created,
    pg_spec,
    plain,
)

OTHER = Address(node="n0", component="worker", worker="w1")


@pytest.fixture
def facts() -> Facts:
    return Facts()


@pytest.fixture
def m(facts: Facts) -> PlacementGroupManager:
    return PlacementGroupManager(PgManagerConfig(), facts)


def wait(m: PlacementGroupManager, request_id: int, pg_id: str = "g1", timeout_ns: int = 5 * S,
         src: Address = DRIVER, now: int = 0) -> list[Any]:
    request = WaitPlacementGroupReady(request_id=request_id, pg_id=pg_id, timeout_ns=timeout_ns)
    out = plain(m.on_request(src, request, now))
    m.check_invariants()
    return out


def commit_all(m: PlacementGroupManager, pg_id: str = "g1") -> list[Any]:
    """Answers the current attempt's prepare and commit with yes; returns the last effects."""
    row = m.row(pg_id)
    assert row is not None
    for node in list(row.waiting):
        m.on_prepared(Address(node=node, component="raylet"),
                      BundlesPrepared(pg_id=pg_id, attempt=row.attempt, ok=True), 0)
    out: list[Any] = []
    for node in list(row.waiting):
        out = plain(m.on_committed(Address(node=node, component="raylet"),
                                   BundlesCommitted(pg_id=pg_id, attempt=row.attempt), 0))
    m.check_invariants()
    return out


def test_a_created_group_is_answered_at_once(m: PlacementGroupManager) -> None:
    created(m, pg_spec())
    assert wait(m, 3) == [("reply", 3, (("CREATED", ("n2",)),), "")]


def test_a_pending_group_is_answered_when_it_is_created(m: PlacementGroupManager) -> None:
    create(m, pg_spec())
    assert wait(m, 3) == [SetTimer(key="gcs.pg.wait.1", at_ns=5 * S)]
    assert wait(m, 4, src=OTHER, timeout_ns=2 * S) == [SetTimer(key="gcs.pg.wait.2", at_ns=2 * S)]
    assert commit_all(m) == [
        CancelTimer(key="gcs.pg.retry.g1"),
        ("put", "g1", "CREATED/none@3"),
        CancelTimer(key="gcs.pg.wait.1"),
        CancelTimer(key="gcs.pg.wait.2"),
        ("reply", 3, (("CREATED", ("n2",)),), ""),
        ("reply", 4, (("CREATED", ("n2",)),), ""),
    ]
    # The deadlines were cancelled; a timer that fired anyway finds nobody.
    assert m.on_timer("gcs.pg.wait.1", 5 * S) == []


def test_retransmits_of_a_parked_request_are_no_ops_and_late_ones_are_answered_again(
        m: PlacementGroupManager) -> None:
    create(m, pg_spec())
    assert wait(m, 3) == [SetTimer(key="gcs.pg.wait.1", at_ns=5 * S)]
    assert wait(m, 3, now=S // 5) == []  # the GCS client's retransmit
    # The same request id from another caller is another request.
    assert wait(m, 3, src=OTHER) == [SetTimer(key="gcs.pg.wait.2", at_ns=5 * S)]
    out = commit_all(m)
    assert [e for e in out if isinstance(e, tuple) and e[0] == "reply"] == [
        ("reply", 3, (("CREATED", ("n2",)),), ""), ("reply", 3, (("CREATED", ("n2",)),), "")]
    # A retransmit that crossed the answer is answered again (the client drops the copy).
    assert wait(m, 3) == [("reply", 3, (("CREATED", ("n2",)),), "")]


def test_the_deadline_answers_with_the_group_still_pending(
        m: PlacementGroupManager, facts: Facts) -> None:
    create(m, pg_spec(bundles=({"CPU": 64.0},)))  # fits nowhere
    assert wait(m, 3, timeout_ns=2 * S) == [SetTimer(key="gcs.pg.wait.1", at_ns=2 * S)]
    out = plain(m.on_timer("gcs.pg.wait.1", 2 * S))
    assert len(out) == 1 and out[0][:2] == ("reply", 3) and out[0][2] == (("PENDING", (None,)),)
    assert out[0][3] == ""
    m.check_invariants()
    # Nothing is left: a retransmit of the answered request parks a new waiter.
    assert wait(m, 3, timeout_ns=2 * S, now=2 * S) == [
        SetTimer(key="gcs.pg.wait.2", at_ns=4 * S)]


def test_a_wait_parks_at_most_the_longest_slice_and_zero_does_not_park(
        m: PlacementGroupManager) -> None:
    create(m, pg_spec(bundles=({"CPU": 64.0},)))
    assert wait(m, 3, timeout_ns=10 * WAIT_TIMEOUT_MAX_NS) == [
        SetTimer(key="gcs.pg.wait.1", at_ns=WAIT_TIMEOUT_MAX_NS)]
    assert wait(m, 4, timeout_ns=0) == [("reply", 4, (("PENDING", (None,)),), "")]


def test_removal_answers_the_waiters_with_an_error(m: PlacementGroupManager) -> None:
    create(m, pg_spec())
    wait(m, 3)
    out = plain(m.on_request(DRIVER, RemovePlacementGroup(request_id=8, pg_id="g1"), 0))
    why = "gcs: placement group 'g1' was removed, so it will never be ready; create a new one"
    assert out[-3:] == [
        CancelTimer(key="gcs.pg.wait.1"),
        ("reply", 3, (("REMOVED", (None,)),), why),
        ("reply", 8, (("REMOVED", (None,)),), ""),
    ]
    m.check_invariants()
    # Waiting for a removed group fails at once.
    assert wait(m, 4) == [("reply", 4, (("REMOVED", (None,)),), why)]


def test_a_wait_that_overtakes_the_creation_is_answered_when_the_group_is_created(
        m: PlacementGroupManager) -> None:
    """The creator does not wait for its create's answer, and a process it handed the
    group to may reach the GCS first: the wait parks for a group not known yet."""
    assert wait(m, 3, pg_id="g1") == [SetTimer(key="gcs.pg.wait.1", at_ns=5 * S)]
    create(m, pg_spec())
    m.check_invariants()
    assert commit_all(m)[-1] == ("reply", 3, (("CREATED", ("n2",)),), "")
    # A group that never comes: the deadline answers with no row.
    assert wait(m, 4, pg_id="never") == [SetTimer(key="gcs.pg.wait.2", at_ns=5 * S)]
    assert plain(m.on_timer("gcs.pg.wait.2", 5 * S)) == [("reply", 4, (), "")]
    m.check_invariants()


def test_a_rescheduling_group_is_waited_for_until_created_again(
        m: PlacementGroupManager, facts: Facts) -> None:
    created(m, pg_spec())
    facts.kill("n2")
    m.on_cluster_changed(0)
    row = m.row("g1")
    assert row is not None and row.state.value == "RESCHEDULING"
    assert wait(m, 3) == [SetTimer(key="gcs.pg.wait.1", at_ns=5 * S)]
    out = commit_all(m)
    assert out[-1] == ("reply", 3, (("CREATED", ("n1",)),), "")


def test_waiters_are_bounded(facts: Facts) -> None:
    m = PlacementGroupManager(PgManagerConfig(waiters_max=1), facts)
    create(m, pg_spec())
    wait(m, 3)
    assert wait(m, 4) == [("reply", 4, (("PENDING", (None,)),), (
        "gcs: 1 callers already wait for placement groups (waiters_max=1); wait again later"))]


def test_a_restarted_manager_has_no_waiters_and_a_retransmit_parks_again(
        facts: Facts) -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    m = PlacementGroupManager(PgManagerConfig(), facts)
    for effect in m.on_request(DRIVER, CreatePlacementGroup(request_id=1, spec=pg_spec()), 0):
        if isinstance(effect, StorePut):
            store.setdefault(effect.table, {})[effect.key] = effect.value
    assert wait(m, 3) == [SetTimer(key="gcs.pg.wait.1", at_ns=5 * S)]
    again = PlacementGroupManager(PgManagerConfig(), facts, store)
    again.on_started(S)
    # The old process's deadline timer is stale in the new one.
    assert again.on_timer("gcs.pg.wait.1", 5 * S) == []
    assert wait(again, 3, now=S) == [SetTimer(key="gcs.pg.wait.1", at_ns=6 * S)]
    # ... nor does it answer a newer waiter under the same key before its deadline.
    assert again.on_timer("gcs.pg.wait.1", 5 * S) == []
    assert commit_all(again)[-1] == ("reply", 3, (("CREATED", ("n2",)),), "")
