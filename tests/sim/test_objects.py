"""Objects above the inline limit: node stores, pulls between nodes, loss and rebuild."""

from __future__ import annotations

import shoal
from shoal import exceptions
from shoal.runtime.api.scheduling_strategies import NodeAffinitySchedulingStrategy
from shoal.sim import Simulation, api

BIG = 700 * 1024  # above the 100 KiB inline limit, several 64 KiB chunks


def _on(node: str, soft: bool = True) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node, soft=soft)


def _wait_for_nodes(count: int) -> None:
    """Hard affinity needs the target known: wait until the cluster has formed."""
    while sum(1 for node in api.nodes() if node["Alive"]) < count:
        api.sleep(0.1)


def test_big_values_move_between_nodes_in_the_node_stores() -> None:
    hard = {"flag": True}

    def main() -> tuple[int, int, int]:
        @shoal.remote(max_retries=-1)  # chaos may crash more workers than any finite bound
        def make(n: int) -> bytes:
            return bytes(range(256)) * (n // 256)

        @shoal.remote(max_retries=-1)
        def checksum(blob: bytes) -> int:
            return sum(blob[::4096])

        _wait_for_nodes(4)
        blob = make.options(scheduling_strategy=_on("n1", soft=not hard["flag"])).remote(BIG)
        remote_sum = shoal.get(checksum.options(scheduling_strategy=_on("n2", soft=not hard["flag"]))
                               .remote(blob))
        local = shoal.get(blob)
        put_ref = shoal.put(b"z" * BIG)
        put_len = shoal.get(checksum.options(scheduling_strategy=_on("n3", soft=not hard["flag"]))
                            .remote(put_ref))
        return remote_sum, sum(local[::4096]), put_len

    for seed, faults in [(1, "none"), (2, "lossy"), (3, "chaos"), (4, "chaos")]:
        hard["flag"] = faults != "chaos"  # a hard affinity to a node cut off would fail
        result = Simulation(seed=seed, nodes=4, faults=faults).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        remote_sum, local_sum, put_sum = result.value
        assert remote_sum == local_sum
        assert put_sum == sum(b"z"[0] for _ in range(0, BIG, 4096))


def test_a_lost_return_is_rebuilt_from_lineage() -> None:
    def main() -> tuple[int, int, list[bytes]]:
        @shoal.remote(max_retries=3)
        def make(n: int) -> bytes:
            api.kv_put(f"ran:{api.now():.6f}", "1")  # one key per execution
            return b"r" * n

        _wait_for_nodes(3)
        blob = make.options(scheduling_strategy=_on("n1", soft=False)).remote(BIG)
        shoal.wait([blob], fetch_local=False)  # done on n1; no copy anywhere else
        api.kill_node("n1", restart_after=1.0)
        api.sleep(10.0)  # the node is declared dead and comes back empty
        return BIG, len(shoal.get(blob)), api.kv_list("ran:")

    result = Simulation(seed=5, nodes=3).run(main)
    assert not result.violations, result.violations
    first, again, runs = result.value
    assert (first, again) == (BIG, BIG)
    assert len(runs) == 2, f"the task ran {len(runs)} times; the rebuild should make it 2"


def test_a_lost_object_that_cannot_be_rebuilt_raises_object_lost_error() -> None:
    def main() -> str:
        @shoal.remote(max_retries=0)
        def make(n: int) -> bytes:
            return b"q" * n

        _wait_for_nodes(3)
        blob = make.options(scheduling_strategy=_on("n1", soft=False)).remote(BIG)
        shoal.wait([blob], fetch_local=False)
        api.kill_node("n1")
        api.sleep(10.0)
        try:
            shoal.get(blob)
        except exceptions.ObjectLostError as error:
            return str(error)
        return "no error"

    result = Simulation(seed=6, nodes=3).run(main)
    assert not result.violations, result.violations
    assert "lost" in result.value and "max_retries" in result.value
