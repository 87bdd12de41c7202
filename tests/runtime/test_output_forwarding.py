"""What tasks and actors print in worker processes reaches the driver (``log_to_driver``)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import cloudpickle
import pytest
from shoal.runtime.output_forwarding import display_name

import shoal

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _wait_for(capfd: pytest.CaptureFixture[str], *needles: str,
              timeout_s: float = 10.0) -> tuple[str, str]:
    """Everything the driver wrote, once every needle showed up in stdout or stderr."""
    out = err = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        captured = capfd.readouterr()
        out, err = out + captured.out, err + captured.err
        if all(n in out + err for n in needles):
            return out, err
        time.sleep(0.05)
    raise AssertionError(f"never printed {needles!r}; stdout={out!r} stderr={err!r}")


def test_task_and_actor_output_reaches_the_driver(capfd: pytest.CaptureFixture[str]) -> None:
    shoal.init(num_cpus=2)
    try:
        @shoal.remote
        def shout(word: str) -> int:
            print(f"task says {word}")
            print(f"task complains {word}", file=sys.stderr)
            return os.getpid()

        @shoal.remote
        class Greeter:
            def greet(self, name: str) -> int:
                print(f"hello {name}", end="")  # completed by the next write
                print("!")
                return os.getpid()

        pid = shoal.get(shout.remote("loudly"))
        out, err = _wait_for(capfd, "task says loudly", "task complains loudly")
        assert f"(shout pid={pid}) task says loudly" in out
        assert f"(shout pid={pid}) task complains loudly" in err

        actor_pid = shoal.get(Greeter.remote().greet.remote("ada"))
        out, _ = _wait_for(capfd, "hello ada!")
        assert f"(Greeter pid={actor_pid}) hello ada!" in out
    finally:
        shoal.shutdown()


def test_log_to_driver_false_keeps_output_in_the_worker_logs(
        capfd: pytest.CaptureFixture[str]) -> None:
    shoal.init(num_cpus=1, log_to_driver=False)
    try:
        @shoal.remote
        def chatty() -> str:
            print("should stay in the worker's log")
            return "done"

        assert shoal.get(chatty.remote()) == "done"
        time.sleep(0.5)  # forwarded lines would be here by now (they leave within ~50 ms)
        captured: Any = capfd.readouterr()
        assert "should stay in the worker's log" not in captured.out + captured.err
    finally:
        shoal.shutdown()


@pytest.mark.parametrize(("task_name", "in_actor", "shown"), [
    ("__main__.square", False, "square"),
    ("tests.mod.test_x.<locals>.f", False, "f"),
    ("app.Counter.incr", True, "Counter"),
    ("app.Counter.__init__", True, "Counter"),
    ("custom-name", False, "custom-name"),
])
def test_lines_are_named_as_ray_names_them(task_name: str, in_actor: bool, shown: str) -> None:
    assert display_name(task_name, in_actor) == shown
