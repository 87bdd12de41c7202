"""``available_resources()`` reads the GCS's resource view (it lags by one report)."""

from __future__ import annotations

import shoal
from shoal.sim import Simulation
from shoal.sim import api


def _poll_until(predicate, timeout_s: float = 10.0) -> dict[str, float]:  # type: ignore[no-untyped-def]
    deadline = api.now() + timeout_s
    while True:
        available = shoal.available_resources()
        if predicate(available) or api.now() > deadline:
            return available
        api.sleep(0.1)


def test_available_resources_follow_what_tasks_hold() -> None:
    def main() -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float]]:
        @shoal.remote(num_cpus=1)
        def hold(seconds: float) -> None:
            api.sleep(seconds)

        while "CPU" not in (total := shoal.cluster_resources()):
            api.sleep(0.1)  # the node table reaches the driver's core worker
        idle = _poll_until(lambda a: a.get("CPU") == total["CPU"])
        ref = hold.remote(5.0)
        busy = _poll_until(lambda a: a.get("CPU") == total["CPU"] - 1)
        shoal.get(ref)
        after = _poll_until(lambda a: a.get("CPU") == total["CPU"])
        return total, idle, busy, after

    result = Simulation(seed=3, nodes=2, until=120.0).run(main)
    assert not result.violations
    total, idle, busy, after = result.value
    assert total["CPU"] >= 2
    assert idle["CPU"] == total["CPU"]
    assert busy["CPU"] == total["CPU"] - 1
    assert after["CPU"] == total["CPU"]
