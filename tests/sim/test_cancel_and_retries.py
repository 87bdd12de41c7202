"""Cancel (recursive, actor calls) and actor retries on exceptions, end to end in the simulator."""

from __future__ import annotations

from typing import Any

import pytest
from shoal.sim import Simulation, api

import shoal
from shoal import exceptions


@shoal.remote
class Marks:
    """Collects marks from tasks, so the driver can see what ran."""

    def __init__(self) -> None:
        self.marks: list[str] = []

    def mark(self, what: str) -> None:
        self.marks.append(what)

    def read(self) -> list[str]:
        return list(self.marks)


def _recursive_program(recursive: bool) -> dict[str, Any]:
    marks = Marks.remote()

    @shoal.remote(max_retries=0)
    def child(i: int, marks: Any) -> str:
        api.sleep(5.0)
        shoal.get(marks.mark.remote(f"child{i}"))
        return "child"

    @shoal.remote(max_retries=0)
    def parent(marks: Any) -> str:
        refs = [child.remote(i, marks) for i in range(2)]
        return str(shoal.get(refs))

    ref = parent.remote(marks)
    api.sleep(1.0)  # the parent runs, blocked on its children, which run too
    shoal.cancel(ref, recursive=recursive)
    out: dict[str, Any] = {}
    try:
        shoal.get(ref)
    except exceptions.TaskCancelledError:
        out["parent"] = "cancelled"
    api.sleep(20.0)  # long past when the children would have finished
    out["marks"] = sorted(shoal.get(marks.read.remote()))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_recursive_cancel_stops_the_children_the_task_submitted(seed: int) -> None:
    result = Simulation(seed=seed, nodes=3).run(lambda: _recursive_program(True))
    assert not result.violations, f"seed {seed}: {result.violations}"
    assert result.value == {"parent": "cancelled", "marks": []}, f"seed {seed}"


def test_non_recursive_cancel_lets_the_children_finish() -> None:
    result = Simulation(seed=1, nodes=3).run(lambda: _recursive_program(False))
    assert not result.violations, result.violations
    assert result.value == {"parent": "cancelled", "marks": ["child0", "child1"]}


def test_cancel_of_actor_calls_skips_queued_ones_and_lets_a_running_one_finish() -> None:
    def main() -> dict[str, Any]:
        @shoal.remote
        class Slow:
            def __init__(self) -> None:
                self.ran: list[int] = []

            def nap(self, i: int) -> int:
                api.sleep(1.0)
                self.ran.append(i)
                return i

            def log(self) -> list[int]:
                return list(self.ran)

        actor = Slow.remote()
        refs = [actor.nap.remote(i) for i in range(4)]
        api.sleep(0.5)  # call 0 runs, the others wait behind it
        shoal.cancel(refs[1])
        shoal.cancel(refs[0])  # running: a sync method is not interrupted
        out: dict[str, Any] = {}
        try:
            shoal.cancel(refs[2], force=True)
        except ValueError as error:
            out["force"] = "not supported for actor tasks" in str(error)
        values: list[Any] = []
        for ref in refs:
            try:
                values.append(shoal.get(ref))
            except exceptions.TaskCancelledError:
                values.append("cancelled")
        out["values"] = values
        out["ran"] = shoal.get(actor.log.remote())
        return out

    result = Simulation(seed=2, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == {"force": True, "values": [0, "cancelled", 2, 3], "ran": [0, 2, 3]}


def test_actor_methods_retry_on_exceptions_within_max_task_retries() -> None:
    def main() -> dict[str, Any]:
        @shoal.remote(max_task_retries=3)
        class Flaky:
            def __init__(self) -> None:
                self.calls: dict[str, int] = {}

            def _count(self, name: str) -> int:
                self.calls[name] = self.calls.get(name, 0) + 1
                return self.calls[name]

            @shoal.method(retry_exceptions=[ValueError])
            def third_time_lucky(self) -> int:
                if self._count("lucky") < 3:
                    raise ValueError("not yet")
                return self.calls["lucky"]

            @shoal.method(retry_exceptions=[ValueError])
            def wrong_kind(self) -> None:
                self._count("wrong")
                raise KeyError("not in the allowlist")

            def always(self) -> None:
                self._count("always")
                raise ValueError("never works")

            def counts(self) -> dict[str, int]:
                return dict(self.calls)

        actor = Flaky.remote()
        out: dict[str, Any] = {"lucky": shoal.get(actor.third_time_lucky.remote())}
        for name, ref in (("wrong", actor.wrong_kind.remote()),
                          ("plain", actor.always.remote()),
                          ("options", actor.always.options(
                              retry_exceptions=True, max_task_retries=1).remote())):
            try:
                shoal.get(ref)
            except exceptions.RayTaskError as error:
                out[name] = type(error).__name__
        out["counts"] = shoal.get(actor.counts.remote())
        return out

    result = Simulation(seed=3, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == {
        "lucky": 3, "wrong": "RayTaskError(KeyError)", "plain": "RayTaskError(ValueError)",
        "options": "RayTaskError(ValueError)",
        # always: once without retries, then twice (one retry) with the options
        "counts": {"lucky": 3, "wrong": 1, "always": 3}}


def test_method_rejects_a_bad_retry_option() -> None:
    with pytest.raises(TypeError, match="retry_exceptions must be either a boolean"):
        shoal.method(retry_exceptions="yes")
    with pytest.raises(ValueError, match="max_task_retries must be an integer >= -1"):
        shoal.method(max_task_retries=-5)


def test_concurrency_groups_run_beside_the_default_group_each_within_its_limit() -> None:
    def main() -> dict[str, Any]:
        @shoal.remote(concurrency_groups={"io": 2})
        class Server:
            def __init__(self) -> None:
                self.is_open = False
                self.running = 0
                self.most = 0

            @shoal.method(concurrency_group="io")
            def wait_open(self) -> str:
                self.running += 1
                self.most = max(self.most, self.running)
                while not self.is_open:
                    api.sleep(0.1)
                self.running -= 1
                return "opened"

            def open(self) -> str:  # the default group (max_concurrency 1)
                self.is_open = True
                return "open"

            def most_at_once(self) -> int:
                return self.most

        server = Server.remote()
        waits = [server.wait_open.remote() for _ in range(3)]
        api.sleep(1.0)  # two io calls block; the third waits for room in "io"
        out = {"open": shoal.get(server.open.remote(), timeout=10)}
        out["waits"] = shoal.get(waits, timeout=10)
        out["most"] = shoal.get(server.most_at_once.remote())
        try:
            Server.options(concurrency_groups={"io": 0}).remote()
        except ValueError as error:
            out["bad"] = "must be an integer >= 1" in str(error)
        try:
            server.open.options(concurrency_group="disk").remote()
        except ValueError as error:
            out["unknown"] = "concurrency group 'disk' is not one of the actor's ('io')" in str(
                error)
        return out

    result = Simulation(seed=6, nodes=1).run(main)
    assert not result.violations, result.violations
    assert result.value == {"open": "open", "waits": ["opened"] * 3, "most": 2, "bad": True,
                            "unknown": True}


def test_cancel_of_a_borrowed_ref_is_forwarded_to_its_owner() -> None:
    def main() -> str:
        @shoal.remote
        def slow() -> str:
            api.sleep(1000.0)
            return "finished"

        @shoal.remote
        def canceller(refs: list[Any]) -> str:
            shoal.cancel(refs[0])  # a ref this task borrows: the driver owns it
            return "sent"

        ref = slow.remote()
        api.sleep(1.0)  # it runs
        assert shoal.get(canceller.remote([ref])) == "sent"
        try:
            return f"not cancelled: {shoal.get(ref, timeout=60)}"
        except shoal.exceptions.TaskCancelledError:
            return "cancelled"

    for seed in (4, 5):
        result = Simulation(seed=seed, nodes=2).run(main)
        assert not result.violations, result.violations
        assert result.value == "cancelled", f"seed {seed}: {result.value}"
