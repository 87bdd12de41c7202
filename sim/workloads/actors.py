"""The ``actors`` workload: Ray's actor model end to end, under faults.

A driver program written against the public API runs rounds of actor work:
counters that may restart forever (``max_restarts=-1``, ``max_task_retries=-1``)
and fragile ones that may not, a threaded counter (``max_concurrency > 1``), a
named detached key-value actor found with ``get_actor`` from tasks, tasks that
call actors through handles passed to them and create actors of their own, an
actor that calls another through a handle passed to it, an async actor (its
calls interleave at ``await asyncio.sleep`` on virtual time, and ``await``
refs of tasks the driver passes in),
``kill`` (for good, and with a restart), and handles dropped so actors go out
of scope. The shape is drawn from the seed.

Every call records its execution in ``_Recorder`` (actor methods run in the
same Python process, under the baton), which checks at once:

* calls from one caller to one actor start in submission order, within each
  incarnation of the actor;
* a call runs at most once per incarnation, and in more than one incarnation
  only if it may be retried after a restart (``max_task_retries``);
* a call never runs in an incarnation older than the newest one its caller
  had heard of when it submitted the call (it never sees state from before a
  restart it was submitted after);
* a threaded or async actor never runs more calls at once than ``max_concurrency``.

The program asserts every result: call i of a fragile counter answers i + 1 or
``RayActorError``; a restartable counter never fails; an async actor's sum of
awaited task results is exact;
a killed actor answers ``RayActorError`` (no handle hangs on a dead actor: a
hang is a liveness violation). At quiescence (after the heal): every actor is
dead and its lease given back, no call or request pending in any core worker,
no object left, and every raylet has all its resources back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from random import Random
from typing import Any

from shoal.sim.harness import ClusterSim
from shoal.sim.workloads.settling import SettlingWorkload

_RECORDER: _Recorder | None = None


@dataclass(slots=True)
class _Recorder:
    """Execution log of actor calls, checked as calls start."""

    sim: ClusterSim
    last: dict[tuple[str, int, str], int] = field(default_factory=dict)
    ran: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    running: dict[tuple[str, int], int] = field(default_factory=dict)
    calls: int = 0

    def start(self, actor: str, incarnation: int, tag: tuple[str, int, int, bool],
              limit: int = 1) -> None:
        caller, n, known, retry = tag
        self.calls += 1
        where = f"actor {actor} (incarnation {incarnation})"
        last = self.last.get((actor, incarnation, caller), -1)
        if n <= last:
            self.sim.violation(f"{where} ran call {n} of {caller} after call {last}: calls "
                               "from one caller must run in submission order")
        self.last[(actor, incarnation, caller)] = max(n, last)
        runs = self.ran.setdefault((actor, caller, n), [])
        if incarnation in runs:
            self.sim.violation(f"{where} ran call {n} of {caller} twice")
        elif runs and not retry:
            self.sim.violation(f"{where} ran call {n} of {caller} again after a restart, "
                               "but the call may not be retried")
        runs.append(incarnation)
        if incarnation < known:
            self.sim.violation(f"{where} ran call {n} of {caller}, submitted after its caller "
                               f"had heard of incarnation {known}")
        key = (actor, incarnation)
        self.running[key] = self.running.get(key, 0) + 1
        if self.running[key] > limit:
            self.sim.violation(f"{where} runs {self.running[key]} calls at once, above "
                               f"max_concurrency={limit}")

    def end(self, actor: str, incarnation: int) -> None:
        key = (actor, incarnation)
        self.running[key] = self.running.get(key, 1) - 1


def _me() -> tuple[str, int]:
    from shoal.runtime.api.context import get_context

    ctx: Any = get_context()
    return str(ctx.current_actor_id), int(ctx.current_actor_restarts)


class Counter:
    """A counter actor; each call reports (incarnation, count after it)."""

    def __init__(self, limit: int = 1) -> None:
        self.count = 0
        self.limit = limit

    def incr(self, tag: tuple[str, int, int, bool], pause_s: float = 0.0) -> tuple[int, int]:
        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag, self.limit)
        try:
            if pause_s:
                from shoal.sim import api

                api.sleep(pause_s)
            self.count += 1
            return incarnation, self.count
        finally:
            _RECORDER.end(actor, incarnation)


    def relay(self, tag: tuple[str, int, int, bool], other: Any, count: int) -> list[int]:
        """Calls another actor through a handle passed in, and waits for it."""
        import shoal

        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag, self.limit)
        try:
            me = _Caller(f"{actor}@{incarnation}:{tag[0]}:{tag[1]}")
            refs = [other.incr.remote(me.tag(other, True)) for _ in range(count)]
            return [count for _, count in shoal.get(refs)]
        finally:
            _RECORDER.end(actor, incarnation)


class AsyncCounter:
    """An async actor: calls interleave at their awaits; ``total`` awaits task refs."""

    def __init__(self, limit: int) -> None:
        self.count = 0
        self.limit = limit

    async def incr(self, tag: tuple[str, int, int, bool], pause_s: float = 0.0) -> tuple[int, int]:
        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag, self.limit)
        try:
            if pause_s:
                await asyncio.sleep(pause_s)  # virtual time: other calls run meanwhile
            self.count += 1
            return incarnation, self.count
        finally:
            _RECORDER.end(actor, incarnation)

    async def squares(self, tag: tuple[str, int, int, bool], count: int) -> int:
        """Submits tasks from the actor and awaits their refs (the actor owns them)."""
        import shoal

        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag, self.limit)
        try:
            task = shoal.remote(max_retries=-1)(square)
            return sum(await asyncio.gather(*[task.remote(i) for i in range(count)]))
        finally:
            _RECORDER.end(actor, incarnation)

    async def total(self, tag: tuple[str, int, int, bool], refs: list[Any]) -> int:
        """Awaits the refs of the driver's tasks (passed in a list, so they arrive as refs)."""
        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag, self.limit)
        try:
            first = await refs[0] if refs else 0
            values = await asyncio.gather(*refs)
            assert not refs or values[0] == first, (values, first)
            return sum(values)
        finally:
            _RECORDER.end(actor, incarnation)


def square(x: int) -> int:
    """A task body whose refs the async actor awaits."""
    return x * x


class KeyValue:
    """A key-value actor; each call reports the incarnation it ran in."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    def put(self, tag: tuple[str, int, int, bool], key: str, value: int) -> int:
        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag)
        self.data[key] = value
        _RECORDER.end(actor, incarnation)
        return incarnation

    def get(self, tag: tuple[str, int, int, bool], key: str) -> tuple[int, int | None]:
        actor, incarnation = _me()
        assert _RECORDER is not None
        _RECORDER.start(actor, incarnation, tag)
        _RECORDER.end(actor, incarnation)
        return incarnation, self.data.get(key)


class _Caller:
    """Tags calls with (caller, number, newest incarnation heard of, may retry)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.numbers: dict[str, int] = {}

    def tag(self, handle: Any, retry: bool) -> tuple[str, int, int, bool]:
        from shoal.runtime.api.context import get_context

        actor_id = handle._actor_id
        n = self.numbers.get(actor_id, 0)
        self.numbers[actor_id] = n + 1
        ctx: Any = get_context()
        kernel = ctx.host.kernel(ctx.address)
        known = kernel.actors.known_restarts(actor_id) if kernel is not None else 0
        return self.name, n, known, retry


def _task_caller() -> _Caller:
    from shoal.runtime.api.context import get_context
    from shoal.runtime.api.executor import current_task_spec

    spec = current_task_spec()
    assert spec is not None
    return _Caller(f"{get_context().address}:{spec.task_id}:{spec.attempt}")


def call_counter(handle: Any, count: int, retry: bool) -> list[tuple[int, int]]:
    """A task body: calls a counter ``count`` times through a handle passed in."""
    import shoal

    me = _task_caller()
    return list(shoal.get([handle.incr.remote(me.tag(handle, retry)) for _ in range(count)]))


def read_named(name: str, key: str) -> tuple[int, int | None]:
    """A task body: looks the key-value actor up by name and reads a key."""
    import shoal

    me = _task_caller()
    kv = shoal.get_actor(name)
    return tuple(shoal.get(kv.get.remote(me.tag(kv, True), key)))


def own_counter(count: int) -> list[tuple[int, int]]:
    """A task body: creates its own counter, calls it; it goes out of scope at the end."""
    import shoal

    me = _task_caller()
    counter = shoal.remote(Counter).options(max_restarts=-1, max_task_retries=-1).remote()
    return list(shoal.get([counter.incr.remote(me.tag(counter, True)) for _ in range(count)]))


@dataclass(frozen=True)
class _Shape:
    counters: int
    calls: int
    tasks: int
    threads: int


def actors_program(rng: Random, until_s: float = 30.0) -> Any:
    """Builds the driver's ``main`` for one seed: rounds of actor work during the faults."""
    shape = _Shape(counters=1 + rng.randrange(3), calls=2 + rng.randrange(6),
                   tasks=1 + rng.randrange(3), threads=2 + rng.randrange(3))
    busy_s = until_s * (0.2 + 0.6 * rng.random())
    pause_s = 0.1 + rng.random()

    def main() -> dict[str, Any]:
        from shoal.sim import api

        driver = _Caller("driver")
        rounds = 0
        detached: list[Any] = []
        while True:
            detached.append(_one_round(driver, shape, rounds))
            rounds += 1
            if api.now() >= busy_s:
                break
            api.sleep(pause_s)
        import shoal

        for kv in detached:
            shoal.kill(kv)
        return {"rounds": rounds}

    return main


def _one_round(driver: _Caller, shape: _Shape, round_no: int) -> Any:
    import shoal
    from shoal import exceptions

    counter_cls = shoal.remote(Counter)
    sturdy = [counter_cls.options(max_restarts=-1, max_task_retries=-1).remote()
              for _ in range(shape.counters)]
    fragile = counter_cls.remote()
    threaded = counter_cls.options(max_concurrency=shape.threads, max_restarts=-1,
                                   max_task_retries=-1).remote(shape.threads)
    kv = shoal.remote(KeyValue).options(name=f"kv{round_no}", lifetime="detached",
                                        max_restarts=-1, max_task_retries=-1).remote()

    refs = [[c.incr.remote(driver.tag(c, True)) for _ in range(shape.calls)] for c in sturdy]
    weak = [fragile.incr.remote(driver.tag(fragile, False)) for _ in range(shape.calls)]
    slow = [threaded.incr.remote(driver.tag(threaded, True), 0.05)
            for _ in range(shape.threads * 2)]
    put_in = shoal.get(kv.put.remote(driver.tag(kv, True), "k", round_no))
    task_fn = shoal.remote(max_retries=-1)(call_counter)
    via_tasks = [task_fn.remote(sturdy[i % len(sturdy)], shape.calls, True)
                 for i in range(shape.tasks)]
    reads = [shoal.remote(max_retries=-1)(read_named).remote(f"kv{round_no}", "k")
             for _ in range(shape.tasks)]
    owned = shoal.remote(max_retries=-1)(own_counter).remote(shape.calls)
    relayed = sturdy[-1].relay.remote(driver.tag(sturdy[-1], True), threaded, shape.calls)
    aio_limit = shape.threads if round_no % 2 else 1000  # 1000: Ray's async default
    aio = shoal.remote(AsyncCounter).options(
        max_restarts=-1, max_task_retries=-1,
        **({"max_concurrency": aio_limit} if aio_limit != 1000 else {})).remote(aio_limit)
    aio_slow = [aio.incr.remote(driver.tag(aio, True), 0.05) for _ in range(shape.threads * 2)]
    squares = [shoal.remote(max_retries=-1)(square).remote(i) for i in range(shape.calls)]
    aio_total = aio.total.remote(driver.tag(aio, True), squares)
    aio_own = aio.squares.remote(driver.tag(aio, True), shape.calls)

    for results in shoal.get([r for rs in refs for r in rs]), shoal.get(slow):
        assert all(count >= 1 for _, count in results), results
    _check_fragile(weak, exceptions)
    for results in shoal.get(via_tasks):
        assert len(results) == shape.calls, results
    for incarnation, value in shoal.get(reads):
        assert value == round_no or incarnation != put_in, (incarnation, value, put_in)
    assert len(shoal.get(owned)) == shape.calls
    assert len(shoal.get(relayed)) == shape.calls and min(shoal.get(relayed)) >= 1
    assert all(count >= 1 for _, count in shoal.get(aio_slow))
    assert shoal.get(aio_own) == sum(i * i for i in range(shape.calls))
    _check_total(aio_total, sum(i * i for i in range(shape.calls)), exceptions)

    victim = sturdy[0]
    shoal.kill(victim, no_restart=False)  # restarts: the next calls still succeed
    assert shoal.get(victim.incr.remote(driver.tag(victim, True)))[1] >= 1
    shoal.kill(fragile)
    try:
        outcome = shoal.get(fragile.incr.remote(driver.tag(fragile, False)))
        raise AssertionError(f"a killed actor answered {outcome!r}")
    except exceptions.RayActorError:
        pass
    return kv  # detached: killed by the program at the end; the rest go out of scope


def _check_total(ref: Any, expected: int, exceptions: Any) -> None:
    """The async actor's sum of the driver's task results is exact, or ``OwnerDiedError``.

    The kernel declares an object's owner dead when the owner's node is (a raylet
    crash on the head node); in the simulator the driver outlives its raylet, so
    an actor awaiting a driver-owned object at that moment gets this documented
    error although the driver lives on.
    """
    import shoal

    try:
        assert shoal.get(ref) == expected
    except exceptions.OwnerDiedError:
        pass


def _check_fragile(refs: list[Any], exceptions: Any) -> None:
    """Call i of a fragile counter (one caller, never restarted) answers i + 1, or fails.

    A call may fail after later ones answered: it ran, its answer was lost, and the
    actor died before it was resent. Calls still run in order, so every answer is exact.
    """
    import shoal

    for index, ref in enumerate(refs):
        try:
            _, count = shoal.get(ref)
        except exceptions.RayActorError:
            continue
        assert count == index + 1, f"fragile call {index} answered {count}, not {index + 1}"


class ActorsWorkload(SettlingWorkload):
    """Runs ``actors_program`` and checks the cluster settles clean afterwards."""

    name = "actors"

    def __init__(self, rng: Random) -> None:
        self._program_rng = Random(rng.getrandbits(64))
        super().__init__(rng, lambda: None)
        self._recorder: _Recorder | None = None

    def setup(self, sim: ClusterSim) -> None:
        global _RECORDER
        self._main = actors_program(self._program_rng, sim.config.until_s)
        self._recorder = _RECORDER = _Recorder(sim)
        super().setup(sim)

    def stats(self) -> dict[str, Any]:
        return {"actor_calls": self._recorder.calls if self._recorder else 0}

    def extra_leaks(self) -> list[str]:
        gcs = self.gcs_kernel()
        if gcs is None:
            return ["the GCS is down"]
        out = [f"actor {row.actor_id} is still {row.phase.value}"
               for row in gcs.actors.rows if row.phase.value != "DEAD"]
        if gcs.actors.returning_leases:
            out.append(f"the GCS is still giving back leases {gcs.actors.returning_leases}")
        return out
