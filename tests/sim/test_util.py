"""shoal.util in the simulator: ActorPool (ordered and unordered results, queued submits,
push/pop) and the actor-backed Queue (blocking, timeouts, batches, no deadlock between a
blocked consumer and its producer)."""

from __future__ import annotations

from typing import Any

import pytest
from shoal.sim import Simulation
from shoal.sim import api as sim_api

import shoal
from shoal.util import ActorPool
from shoal.util.queue import Empty, Full, Queue


@shoal.remote
class Doubler:
    def double(self, value: int) -> int:
        sim_api.sleep(0.1 * (value % 3))  # finish out of submission order
        return 2 * value


def run(main: Any, *, seed: int = 1, faults: str = "none") -> Any:
    result = Simulation(seed=seed, nodes=2, faults=faults, until=200).run(main)
    assert result.error is None, f"seed {seed}: {result.error!r}"
    assert not result.violations, f"seed {seed}: {result.violations}"
    return result.value


# --- ActorPool --------------------------------------------------------------------


def test_map_keeps_order_and_map_unordered_returns_everything() -> None:
    def main() -> tuple[list[int], list[int]]:
        pool = ActorPool([Doubler.remote(), Doubler.remote()])
        ordered = list(pool.map(lambda a, v: a.double.remote(v), range(7)))
        unordered = list(pool.map_unordered(lambda a, v: a.double.remote(v), range(7)))
        return ordered, unordered

    ordered, unordered = run(main)
    assert ordered == [0, 2, 4, 6, 8, 10, 12]
    assert sorted(unordered) == ordered


def test_submit_queues_beyond_the_actors_and_get_next_follows_submission_order() -> None:
    def main() -> list[Any]:
        pool = ActorPool([Doubler.remote()])
        for value in (5, 1, 3):
            pool.submit(lambda a, v: a.double.remote(v), value)
        out: list[Any] = [pool.has_free(), pool.has_next()]
        out += [pool.get_next(), pool.get_next(), pool.get_next(), pool.has_next()]
        with pytest.raises(StopIteration):
            pool.get_next()
        return out

    assert run(main) == [False, True, 10, 2, 6, False]


def test_get_next_after_unordered_took_a_later_result_is_refused() -> None:
    """As in Ray: once ``get_next_unordered`` took a later result, ``get_next`` has no
    ordered result to return, while unordered gets still drain the rest."""
    def main() -> str:
        pool = ActorPool([Doubler.remote(), Doubler.remote()])
        pool.submit(lambda a, v: a.double.remote(v), 2)  # slow (0.2 s)
        pool.submit(lambda a, v: a.double.remote(v), 3)  # fast
        assert pool.get_next_unordered() == 6
        with pytest.raises(ValueError, match="not allowed to call get_next"):
            pool.get_next()
        assert pool.get_next_unordered() == 4
        pool.submit(lambda a, v: a.double.remote(v), 4)
        assert pool.get_next() == 8  # ordered again from the next submission on
        return "ok"

    assert run(main) == "ok"


def test_timeouts_push_and_pop_idle() -> None:
    @shoal.remote
    class Slow:
        def wait(self, seconds: float) -> float:
            sim_api.sleep(seconds)
            return seconds

    def main() -> list[Any]:
        first, second = Slow.remote(), Slow.remote()
        pool = ActorPool([first])
        pool.submit(lambda a, v: a.wait.remote(v), 5.0)
        out: list[Any] = []
        with pytest.raises(TimeoutError):
            pool.get_next(timeout=0.5)
        with pytest.raises(TimeoutError):
            pool.get_next_unordered(timeout=0.5)
        out.append(pool.get_next())
        idle = pool.pop_idle()
        out += [idle is not None, pool.pop_idle(), pool.has_free()]
        pool.push(idle)
        with pytest.raises(ValueError, match="already belongs"):
            pool.push(idle)
        pool.push(second)
        out.append(sorted(pool.map(lambda a, v: a.wait.remote(v), [0.1, 0.2])))
        return out

    assert run(main) == [5.0, True, None, False, [0.1, 0.2]]


# --- Queue ----------------------------------------------------------------------------


def test_fifo_sizes_and_non_blocking_errors() -> None:
    def main() -> list[Any]:
        q = Queue(maxsize=2)
        out: list[Any] = [q.empty(), q.full(), len(q)]
        q.put(1)
        q.put_nowait(2)
        out += [q.full(), q.qsize()]
        with pytest.raises(Full):
            q.put_nowait(3)
        with pytest.raises(Full):
            q.put(3, block=False)
        out += [q.get(), q.get_nowait()]
        with pytest.raises(Empty):
            q.get_nowait()
        with pytest.raises(Empty):
            q.get(block=False)
        with pytest.raises(ValueError, match="non-negative"):
            q.get(timeout=-1)
        q.shutdown()
        return out

    assert run(main) == [True, False, 0, True, 2, 1, 2]


def test_batches_are_all_or_nothing() -> None:
    def main() -> list[Any]:
        q = Queue(maxsize=3)
        q.put_nowait_batch([1, 2])
        with pytest.raises(Full):
            q.put_nowait_batch([3, 4])
        out: list[Any] = [q.size()]
        with pytest.raises(Empty):
            q.get_nowait_batch(3)
        out.append(q.get_nowait_batch(2))
        q.shutdown()
        return out

    assert run(main) == [2, [1, 2]]


def test_blocking_get_and_put_time_out_on_virtual_time() -> None:
    def main() -> list[float]:
        q = Queue(maxsize=1)
        start = sim_api.now()
        with pytest.raises(Empty):
            q.get(timeout=2.0)
        waited_get = sim_api.now() - start
        q.put("x")
        start = sim_api.now()
        with pytest.raises(Full):
            q.put("y", timeout=1.0)
        waited_put = sim_api.now() - start
        q.shutdown()
        return [waited_get, waited_put]

    waited_get, waited_put = run(main)
    assert waited_get >= 2.0 and waited_put >= 1.0


def test_blocked_consumers_and_producers_do_not_deadlock() -> None:
    """Consumers block in get on an empty queue while a producer task fills it; a
    bounded queue makes the producer block in put until the consumers take."""
    @shoal.remote(num_cpus=0)
    def produce(q: Queue, count: int) -> int:
        for i in range(count):
            q.put(i)
        return count

    @shoal.remote(num_cpus=0)
    def consume(q: Queue, count: int) -> list[int]:
        return [q.get(timeout=60) for _ in range(count)]

    def main() -> tuple[int, list[int]]:
        q = Queue(maxsize=2)
        consumers = [consume.remote(q, 5) for _ in range(2)]
        producer = produce.remote(q, 10)
        got = sorted(v for batch in shoal.get(consumers) for v in batch)
        done = shoal.get(producer)
        q.shutdown()
        return done, got

    assert run(main) == (10, list(range(10)))


@pytest.mark.parametrize("seed", range(8))
def test_queue_and_pool_under_lossy_network(seed: int) -> None:
    def main() -> tuple[list[int], list[int]]:
        q = Queue()
        q.put_nowait_batch([1, 2, 3])
        items = [q.get(timeout=30) for _ in range(3)]
        pool = ActorPool([Doubler.remote(), Doubler.remote()])
        doubled = list(pool.map(lambda a, v: a.double.remote(v), range(4)))
        return items, doubled

    assert run(main, seed=seed, faults="lossy") == ([1, 2, 3], [0, 2, 4, 6])
