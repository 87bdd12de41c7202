"""Placement groups and shoal.util on the production host: a real node daemon (GCS and
raylet), real worker processes, real sockets.

One local cluster serves the module; its teardown checks nothing is left behind (no
process it spawned, no session directory, no ``/dev/shm`` file)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Iterator

import cloudpickle
import psutil
import pytest
from shoal.runtime.api.context import get_context
from shoal.runtime.api.exceptions import RayActorError

import shoal
from shoal.util import (
    ActorPool,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from shoal.util.queue import Empty, Full, Queue
from shoal.util.scheduling_strategies import PlacementGroupSchedulingStrategy

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
NAMESPACE = "pg-tests"


def _session_dir() -> str:
    return os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]


def _our_processes(besides: set[int] | None = None) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in (besides or ())]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One 2-CPU local cluster for the module, checked clean at the end."""
    before = {p.pid for p in _our_processes()}
    shoal.init(num_cpus=2, namespace=NAMESPACE)
    session_dir = _session_dir()
    try:
        yield
    finally:
        spawned = _our_processes(before)
        shoal.shutdown()
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"
        name = os.path.basename(os.path.normpath(session_dir))
        assert not glob.glob(f"/dev/shm/shoal-{glob.escape(name)}*"), "shm files left behind"


@shoal.remote(num_cpus=1)
def node_of() -> str:
    return shoal.get_runtime_context().get_node_id()


@shoal.remote
class Doubler:
    def double(self, value: int) -> int:
        return 2 * value


def test_a_group_is_created_used_and_removed(cluster: None) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK", name="prod")
    assert pg.wait(30)
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and len(row["bundles_to_node_id"]) == 2
    assert get_placement_group("prod") == pg
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
    assert shoal.get(node_of.options(scheduling_strategy=strategy).remote(), timeout=60) == \
        row["bundles_to_node_id"][1]
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    # The bundles' CPUs went back: two one-CPU tasks outside any group still run.
    assert len(shoal.get([node_of.remote(), node_of.remote()], timeout=60)) == 2


def test_a_group_larger_than_the_node_stays_pending(cluster: None) -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_PACK")
    assert not pg.wait(1)
    assert not pg.wait(0)
    assert placement_group_table(pg)["state"] == "PENDING"
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="was removed, so it will never be ready"):
        pg.wait(1)


def test_wait_returns_once_room_frees(cluster: None) -> None:
    """``pg.wait`` is answered by the GCS when the group is created, not on a timer."""
    hog = placement_group([{"CPU": 2}])
    assert hog.wait(30)
    later = placement_group([{"CPU": 2}])
    assert not later.wait(0.2)
    remove_placement_group(hog)
    assert later.wait(30)
    remove_placement_group(later)


def test_the_actor_of_a_removed_group_dies(cluster: None) -> None:
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    actor = Doubler.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
    assert shoal.get(actor.double.remote(21), timeout=60) == 42
    remove_placement_group(pg)
    with pytest.raises(RayActorError, match="placement group"):
        for _ in range(100):  # a call may still reach the worker before the kill does
            shoal.get(actor.double.remote(1), timeout=60)


def test_actor_pool_and_queue(cluster: None) -> None:
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(5))) == [0, 2, 4, 6, 8]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(3))) == [0, 2, 4]
    queue = Queue(maxsize=2)
    queue.put(1)
    queue.put_nowait(2)
    with pytest.raises(Full):
        queue.put(3, timeout=0.2)
    assert [queue.get(), queue.get_nowait()] == [1, 2]
    with pytest.raises(Empty):
        queue.get(timeout=0.2)
    queue.shutdown()


SECOND_DRIVER = """
import sys
import shoal
from shoal.util import placement_group

shoal.init(address=sys.argv[1], namespace=sys.argv[2])
kept = placement_group([{"CPU": 0.5}], name="kept-pg", lifetime="detached")
temporary = placement_group([{"CPU": 0.5}], name="temporary-pg")
print(kept.wait(30), temporary.wait(30))
"""  # and exits: shutdown at exit ends its job


def test_a_drivers_job_removes_its_groups_but_not_detached_ones(cluster: None) -> None:
    done = subprocess.run([sys.executable, "-c", SECOND_DRIVER, _session_dir(), NAMESPACE],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
    with pytest.raises(ValueError, match="Failed to look up placement group"):
        get_placement_group("temporary-pg")
    kept = get_placement_group("kept-pg")
    assert placement_group_table(kept)["state"] == "CREATED"
    remove_placement_group(kept)
