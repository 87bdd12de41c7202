"""``available_resources()`` on a real cluster: the GCS's view of what is free."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import cloudpickle
import pytest

import shoal

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _poll(predicate: Callable[[dict[str, float]], bool], timeout_s: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        available = shoal.available_resources()
        if predicate(available) or time.monotonic() > deadline:
            return available
        time.sleep(0.05)


def test_an_actor_holds_its_resources_until_it_is_killed() -> None:
    shoal.init(num_cpus=2, resources={"gadget": 2})
    try:
        @shoal.remote(num_cpus=1, resources={"gadget": 1})
        class Holder:
            def ping(self) -> str:
                return "pong"

        idle = _poll(lambda a: a.get("CPU") == 2 and a.get("gadget") == 2)
        assert (idle["CPU"], idle["gadget"]) == (2, 2)
        holder = Holder.remote()
        assert shoal.get(holder.ping.remote()) == "pong"
        busy = _poll(lambda a: a.get("CPU") == 1 and a.get("gadget") == 1)
        assert (busy["CPU"], busy["gadget"]) == (1, 1)
        assert shoal.cluster_resources()["gadget"] == 2  # totals do not move
        shoal.kill(holder)
        freed = _poll(lambda a: a.get("CPU") == 2 and a.get("gadget") == 2)
        assert (freed["CPU"], freed["gadget"]) == (2, 2)
    finally:
        shoal.shutdown()
