"""shoal quickstart: Ray's API on an embedded local cluster of real processes.

Run it: python examples/quickstart.py

``shoal.init()`` starts a node daemon (GCS + raylet) and worker processes on
this machine; ``shoal.shutdown()`` stops them and removes everything they made.
"""

from __future__ import annotations

import time

import numpy as np

import shoal as ray


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote
def total(*values: int) -> int:
    return sum(values)


@ray.remote
def fan_out(n: int) -> int:
    # A task may submit tasks and block on them: its CPU is lent out meanwhile.
    return sum(ray.get([square.remote(i) for i in range(n)]))


@ray.remote
def column_means(matrix: np.ndarray) -> list[float]:
    return [float(m) for m in matrix.mean(axis=0)]


@ray.remote
def divide(a: float, b: float) -> float:
    return a / b


@ray.remote
class Counter:
    """An actor: a worker process that keeps this object's state between calls."""

    def __init__(self, start: int) -> None:
        self.value = start

    def add(self, amount: int) -> int:
        self.value += amount
        return self.value


@ray.remote
def add_to(counter: Counter, amount: int) -> int:
    # Actor handles can be passed to tasks, which call the same actor.
    return ray.get(counter.add.remote(amount))


def main() -> None:
    started = time.perf_counter()
    ray.init()
    print(f"cluster up in {time.perf_counter() - started:.2f} s: {ray.cluster_resources()}")

    refs = [square.remote(i) for i in range(10)]
    print("squares:", ray.get(refs))
    print("fan-in of refs:", ray.get(total.remote(*refs)))
    print("nested tasks:", ray.get(fan_out.remote(20)))

    matrix = np.arange(12.0).reshape(4, 3)
    matrix_ref = ray.put(matrix)
    print("numpy through the object store:", ray.get(column_means.remote(matrix_ref)))

    ready, not_ready = ray.wait(refs, num_returns=5)
    print(f"wait: {len(ready)} ready, {len(not_ready)} not yet")

    counter = Counter.remote(100)
    in_order = ray.get([counter.add.remote(1) for _ in range(5)])  # one caller: in order
    print("actor calls:", in_order, "then from a task:", ray.get(add_to.remote(counter, 10)))

    try:
        ray.get(divide.remote(1, 0))
    except ZeroDivisionError as error:  # also a ray.exceptions.RayTaskError
        print("task error caught as the user's exception:", type(error).__name__)

    ray.shutdown()
    print(f"done in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
