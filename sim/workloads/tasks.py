"""The ``tasks`` workload: Ray's task and object protocol end to end, under faults.

A driver program written against the public API (``shoal.remote``, ``get``,
``put``, ``wait``, ``cancel``) runs on the simulated cluster: fan-out and
fan-in, nested tasks that block in ``get``, values below and above the inline
limit, refs passed between tasks, a failing task, cancellations (one of a
task blocked on children it submitted: a recursive cancel), and streaming
generator tasks (issue 5: items consumed as they come, one of them stored, and
a generator dropped half consumed, whose items must not outlive it). The shape
(widths, depths, sizes) is drawn from the seed.

Checked:

* every ``get`` returns the right value or a documented error (the program
  asserts each one; an assertion failing is a violation);
* no object is freed while referenced (a referenced object reported lost is a
  violation);
* with unlimited retries every result is delivered, whatever crashed;
* at quiescence (after the heal): no task pending, no lease held, every raylet's
  resources all available again, and no object left in any core worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from types import SimpleNamespace
from typing import Any

from shoal.sim.harness import ClusterSim
from shoal.sim.workloads.settling import SettlingWorkload


def tasks_program(rng: Random, until_s: float = 30.0) -> Any:
    """Builds the driver's ``main`` for one seed: rounds of work spread over the faults."""
    shape = _Shape(
        width=5 + rng.randrange(40),
        depth=1 + rng.randrange(4),
        big_bytes=100 * 1024 + rng.randrange(200 * 1024),
    )
    busy_s = until_s * (0.2 + 0.6 * rng.random())  # keep submitting work while faults are on
    pause_s = 0.2 + rng.random() * 2.0

    def main() -> dict[str, Any]:
        from shoal.sim import api

        functions = _define_functions()
        rounds = 0
        while True:
            _one_round(functions, shape)
            rounds += 1
            if api.now() >= busy_s:
                return {"rounds": rounds, "width": shape.width, "depth": shape.depth}
            api.sleep(pause_s)

    return main


@dataclass(frozen=True)
class _Shape:
    width: int
    depth: int
    big_bytes: int


def _define_functions() -> SimpleNamespace:
    import shoal
    from shoal.sim import api

    @shoal.remote(max_retries=-1)
    def square(x: int) -> int:
        return x * x

    @shoal.remote(max_retries=-1)
    def total(*xs: int) -> int:
        return sum(xs)

    @shoal.remote(max_retries=-1)
    def nested(n: int, level: int) -> int:
        if level == 0:
            return sum(shoal.get([square.remote(i) for i in range(n)]))
        return int(shoal.get(nested.remote(n, level - 1))) + 1

    @shoal.remote(max_retries=-1)
    def size_of(blob: bytes) -> int:
        return len(blob)

    @shoal.remote(max_retries=-1)
    def make_blob(n: int) -> bytes:
        return b"x" * n

    @shoal.remote(max_retries=0)
    def fails(message: str) -> None:
        raise ValueError(message)

    @shoal.remote(max_retries=-1)
    def sleepy(seconds: float) -> str:
        api.sleep(seconds)
        return "woke"

    @shoal.remote(max_retries=-1)
    def spawner(seconds: float) -> list[str]:
        # Its children sleep far past the run's end: only a recursive cancel ends them.
        return list(shoal.get([sleepy.remote(seconds) for _ in range(2)]))

    @shoal.remote(max_retries=-1)
    def squares(n: int, blob_bytes: int) -> Any:
        for i in range(n):
            api.sleep(0.01)
            yield i * i
        yield b"z" * blob_bytes  # an item above the inline limit: stored

    return SimpleNamespace(square=square, total=total, nested=nested, size_of=size_of,
                           make_blob=make_blob, fails=fails, sleepy=sleepy, spawner=spawner,
                           squares=squares)


def _one_round(f: SimpleNamespace, shape: _Shape) -> None:
    import shoal
    from shoal import exceptions
    from shoal.sim import api

    width = shape.width
    refs = [f.square.remote(i) for i in range(width)]
    assert shoal.get(refs) == [i * i for i in range(width)], "fan-out returned wrong values"
    assert shoal.get(f.total.remote(*refs)) == sum(i * i for i in range(width)), "fan-in"
    assert shoal.get(f.nested.remote(4, shape.depth)) == 14 + shape.depth, "nested tasks"

    blob_ref = f.make_blob.remote(shape.big_bytes)
    assert shoal.get(f.size_of.remote(blob_ref)) == shape.big_bytes, "big object by ref"
    small = shoal.put(b"y" * 10)
    assert shoal.get(f.size_of.remote(small)) == 10, "put object passed by ref"
    assert len(shoal.get(blob_ref)) == shape.big_bytes

    _stream_round(f, shape)

    ready, not_ready = shoal.wait(refs, num_returns=width // 2 + 1)
    assert len(ready) == width // 2 + 1 and len(ready) + len(not_ready) == width

    try:
        shoal.get(f.fails.remote("boom"))
        raise AssertionError("a failing task returned a value")
    except ValueError as error:
        assert isinstance(error, exceptions.RayTaskError), type(error)
    except exceptions.WorkerCrashedError:
        pass  # max_retries=0: a crash of its worker is a documented outcome

    doomed = f.sleepy.remote(1000.0)
    api.sleep(0.5)
    shoal.cancel(doomed)
    try:
        outcome = shoal.get(doomed)
        raise AssertionError(f"a cancelled task returned {outcome!r}")
    except exceptions.TaskCancelledError:
        pass

    # Recursive cancel (the default): the tasks the spawner submitted, which its worker
    # owns, are cancelled with it; were they not, they would still be pending at
    # quiescence (they sleep 1000 s), which the workload reports.
    spawner = f.spawner.remote(1000.0)
    api.sleep(0.5)
    shoal.cancel(spawner)
    try:
        outcome = shoal.get(spawner)
        raise AssertionError(f"a cancelled task returned {outcome!r}")
    except exceptions.TaskCancelledError:
        pass


def _stream_round(f: SimpleNamespace, shape: _Shape) -> None:
    import shoal

    count = shape.width // 4 + 1
    items = [shoal.get(ref) for ref in f.squares.remote(count, shape.big_bytes)]
    assert items[:-1] == [i * i for i in range(count)], f"streamed items: {items[:-1]}"
    assert items[-1] == b"z" * shape.big_bytes, "the stored streamed item"
    dropped = f.squares.remote(count, 10)
    assert shoal.get(next(dropped)) == 0, "first streamed item"
    del dropped  # half consumed: the rest must be released (checked at quiescence)


class TasksWorkload(SettlingWorkload):
    """Runs ``tasks_program`` and checks the cluster settles clean afterwards."""

    name = "tasks"

    def __init__(self, rng: Random) -> None:
        self._program_rng = Random(rng.getrandbits(64))
        super().__init__(rng, lambda: None)

    def setup(self, sim: ClusterSim) -> None:
        self._main = tasks_program(self._program_rng, sim.config.until_s)
        super().setup(sim)

