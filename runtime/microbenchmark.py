"""``shoal microbenchmark``: the workloads of Ray's ``ray microbenchmark``, against shoal or Ray.

Every row has the name Ray gives it (``python/ray/_private/ray_perf.py``) and
Ray's unit ("per second": calls, tasks, or gigabytes per second, as the name
says), and is measured the way Ray's ``timeit`` does: a warm-up that counts how
many calls fit in ``--warmup`` seconds, then ``--samples`` timed samples of at
least ``--sample-seconds`` each, reported as mean ± stdev (population stdev, as
``np.std`` in Ray's helper). Ray's helper warms up for 1 s and takes 4 samples
of 2 s after sleeping 10 s; the defaults here are shorter so that a whole run
stays under ~3 minutes on a 2-core machine (raise them for quieter numbers).

The workloads are written once against the Ray-compatible API and take the
module as a parameter: ``--target shoal`` (default) runs ``import shoal as
ray``, ``--target ray`` runs real Ray, when it is importable. ``--python PATH``
re-runs this file under another interpreter (e.g. a separate venv holding
Ray), so both targets are driven by the same code.

A row whose feature the target lacks (actors, async actors, placement groups on
a host that does not run them yet, Ray's private CoreWorker hooks) is reported
as ``skipped: <reason>``, detected by a probe, never by a crash. A row that
fails midway is reported as ``error: <reason>`` and the run goes on.

Two more rows, in fresh interpreters (``--startup-runs``, 0 to leave them out):
``init() to first task result`` and ``shutdown()``, in seconds.

This module imports nothing of shoal at import time, so it also runs by path
under an interpreter that has Ray but not shoal (``release_tests/
microbenchmark.py`` is a thin entry point that does just that).

Usage::

    shoal microbenchmark [--target shoal|ray] [--only REGEX] [--json FILE]
    shoal microbenchmark --compare A.json B.json
"""

# mypy: disable-error-code="untyped-decorator"
# (the workloads decorate with the target module's `remote`, typed Any: shoal or Ray)

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PER_SECOND = "per second"
SECONDS = "s"
CALL_TIMEOUT_S = 300.0
PG_ROW = "placement group create/removal"


@dataclass(slots=True)
class Row:
    """One benchmark row: ``make(ray)`` builds its state and returns the call to time."""

    name: str
    make: Callable[[Any], Callable[[], object]]
    multiplier: float = 1.0
    needs: tuple[str, ...] = ()


@dataclass(slots=True)
class Result:
    name: str
    mean: float | None
    stdev: float | None
    unit: str
    samples: list[float] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    load_1m: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "mean": self.mean, "stdev": self.stdev,
                               "unit": self.unit}
        if self.samples:
            out["samples"] = [round(s, 6) for s in self.samples]
        if self.skipped is not None:
            out["skipped"] = self.skipped
        if self.error is not None:
            out["error"] = self.error
        if self.load_1m is not None:
            out["load_1m"] = self.load_1m
        return out


# --- the workloads (Ray's ray_perf.py, written against the module given) ------


class _Defs:
    """Remote functions and actor classes of Ray's ray_perf.py, bound to one module."""

    def __init__(self, ray: Any, target: str) -> None:
        import numpy as np

        self.ray = ray
        self.target = target

        @ray.remote
        def small_value() -> bytes:
            return b"ok"

        @ray.remote
        def create_object_containing_ref() -> list[Any]:
            return [ray.put(1) for _ in range(10000)]

        @ray.remote
        def do_put_small() -> None:
            for _ in range(100):
                ray.put(0)

        @ray.remote
        def do_put() -> None:
            for _ in range(10):
                ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

        self.small_value = small_value
        self.create_object_containing_ref = create_object_containing_ref
        self.do_put_small = do_put_small
        self.do_put = do_put
        self._actor_classes: tuple[Any, Any] | None = None
        self._async_actor_class: Any = None

    def util(self) -> Any:
        """``ray.util`` / ``shoal.util`` (placement groups), imported on first use."""
        return importlib.import_module(f"{self.target}.util")

    def actor_classes(self) -> tuple[Any, Any]:
        """``(Actor, Client)``, defined on first use (not every host has actors)."""
        if self._actor_classes is not None:
            return self._actor_classes
        ray, small_value = self.ray, self.small_value

        @ray.remote(num_cpus=0)
        class Actor:
            def small_value(self) -> bytes:
                return b"ok"

            def small_value_arg(self, x: Any) -> bytes:
                return b"ok"

            def small_value_batch(self, n: int) -> None:
                ray.get([small_value.remote() for _ in range(n)])

        @ray.remote(num_cpus=0)
        class Client:
            def __init__(self, servers: Any) -> None:
                self.servers = servers if isinstance(servers, list) else [servers]

            def small_value_batch(self, n: int) -> None:
                results = []
                for s in self.servers:
                    results.extend([s.small_value.remote() for _ in range(n)])
                ray.get(results)

            def small_value_batch_arg(self, n: int) -> None:
                x = ray.put(0)
                results = []
                for s in self.servers:
                    results.extend([s.small_value_arg.remote(x) for _ in range(n)])
                ray.get(results)

        self._actor_classes = (Actor, Client)
        return self._actor_classes

    def async_actor_class(self) -> Any:
        """``AsyncActor`` (async def methods), defined on first use."""
        if self._async_actor_class is not None:
            return self._async_actor_class

        @self.ray.remote
        class AsyncActor:
            async def small_value(self) -> bytes:
                return b"ok"

            async def small_value_with_arg(self, x: Any) -> bytes:
                return b"ok"

        self._async_actor_class = AsyncActor
        return AsyncActor


def _n_cpu() -> int:
    return max(1, (os.cpu_count() or 2) // 2)  # Ray: multiprocessing.cpu_count() // 2


def rows(defs: _Defs) -> list[Row]:
    """Every row of Ray's microbenchmark, in Ray's order."""
    return _object_rows(defs) + _task_rows(defs) + _actor_rows(defs) + _async_actor_rows(defs) + [
        Row(PG_ROW, lambda r: _placement_group_row(r, defs.util()),
            100, ("placement_groups",)),
    ]


def _object_rows(d: _Defs) -> list[Row]:
    ray = d.ray

    def get_small(_: Any) -> Callable[[], object]:
        value = ray.put(0)
        return lambda: ray.get(value)

    def put_multi_small(_: Any) -> Callable[[], object]:
        return lambda: ray.get([d.do_put_small.remote() for _ in range(10)])

    def put_large(_: Any) -> Callable[[], object]:
        import numpy as np

        arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
        return lambda: ray.put(arr)

    def put_multi(_: Any) -> Callable[[], object]:
        return lambda: ray.get([d.do_put.remote() for _ in range(10)])

    def get_containing(_: Any) -> Callable[[], object]:
        ref = d.create_object_containing_ref.remote()
        return lambda: ray.get(ref)

    return [
        Row("single client get calls (Plasma Store)", get_small),
        Row("single client put calls (Plasma Store)", lambda _: lambda: ray.put(0)),
        Row("multi client put calls (Plasma Store)", put_multi_small, 1000),
        Row("single client put gigabytes", put_large, 8 * 0.1),
        Row("single client tasks and get batch",
            lambda _: lambda: ray.get([d.small_value.remote() for _ in range(1000)])),
        Row("multi client put gigabytes", put_multi, 10 * 8 * 0.1),
        Row("single client get object containing 10k refs", get_containing),
        Row("single client object out-of-scope callback registration", _unavailable,
            needs=("ray_private_core_worker",)),
        Row("object out-of-scope callback fire 1k batch", _unavailable, 1000,
            needs=("ray_private_core_worker",)),
    ]


def _task_rows(d: _Defs) -> list[Row]:
    ray = d.ray

    def wait_multiple_refs() -> None:
        num_objs = 1000
        not_ready = [d.small_value.remote() for _ in range(num_objs)]
        fetch_local = True
        for _ in range(num_objs):
            _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            fetch_local = False

    return [
        Row("single client wait 1k refs", lambda _: wait_multiple_refs),
        Row("single client tasks sync", lambda _: lambda: ray.get(d.small_value.remote())),
        Row("single client tasks async",
            lambda _: lambda: ray.get([d.small_value.remote() for _ in range(1000)]), 1000),
    ]


def _actor_rows(d: _Defs) -> list[Row]:
    ray = d.ray
    n_cpu = _n_cpu()

    def multi_task(_: Any) -> Callable[[], object]:
        actor_cls = d.actor_classes()[0]
        actors = [actor_cls.remote() for _ in range(4)]
        return lambda: ray.get([a.small_value_batch.remote(10000) for a in actors])

    def one_to_one(concurrency: int, batch: int) -> Callable[[Any], Callable[[], object]]:
        def make(_: Any) -> Callable[[], object]:
            actor_cls = d.actor_classes()[0]
            a = (actor_cls.options(max_concurrency=concurrency) if concurrency > 1
                 else actor_cls).remote()
            if batch == 1:
                return lambda: ray.get(a.small_value.remote())
            return lambda: ray.get([a.small_value.remote() for _ in range(batch)])
        return make

    def one_to_n(_: Any) -> Callable[[], object]:
        actor_cls, client_cls = d.actor_classes()
        client = client_cls.remote([actor_cls.remote() for _ in range(n_cpu)])
        return lambda: ray.get(client.small_value_batch.remote(5000))

    def n_to_n(_: Any) -> Callable[[], object]:
        actor_cls = d.actor_classes()[0]
        actors = [actor_cls.remote() for _ in range(n_cpu)]

        @ray.remote
        def work(actors: list[Any]) -> None:
            ray.get([actors[i % n_cpu].small_value.remote() for i in range(5000)])

        return lambda: ray.get([work.remote(actors) for _ in range(4)])

    def n_to_n_arg(_: Any) -> Callable[[], object]:
        actor_cls, client_cls = d.actor_classes()
        clients = [client_cls.remote(actor_cls.remote()) for _ in range(n_cpu)]
        return lambda: ray.get([c.small_value_batch_arg.remote(1000) for c in clients])

    return [
        Row("multi client tasks async", multi_task, 10000 * 4, ("actors",)),
        Row("1:1 actor calls sync", one_to_one(1, 1), 1, ("actors",)),
        Row("1:1 actor calls async", one_to_one(1, 1000), 1000, ("actors",)),
        Row("1:1 actor calls concurrent", one_to_one(16, 1000), 1000, ("actors",)),
        Row("1:n actor calls async", one_to_n, 5000 * n_cpu, ("actors",)),
        Row("n:n actor calls async", n_to_n, 4 * 5000, ("actors",)),
        Row("n:n actor calls with arg async", n_to_n_arg, 1000 * n_cpu, ("actors",)),
    ]


def _async_actor_rows(d: _Defs) -> list[Row]:
    ray = d.ray
    n_cpu = _n_cpu()
    needs = ("actors", "async_actors")

    def one(batch: int, with_arg: bool) -> Callable[[Any], Callable[[], object]]:
        def make(_: Any) -> Callable[[], object]:
            a = d.async_actor_class().remote()
            if batch == 1:
                return lambda: ray.get(a.small_value.remote())
            if with_arg:
                return lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(batch)])
            return lambda: ray.get([a.small_value.remote() for _ in range(batch)])
        return make

    def one_to_n(_: Any) -> Callable[[], object]:
        async_cls, client_cls = d.async_actor_class(), d.actor_classes()[1]
        client = client_cls.remote([async_cls.remote() for _ in range(n_cpu)])
        return lambda: ray.get(client.small_value_batch.remote(5000))

    def n_to_n(_: Any) -> Callable[[], object]:
        actors = [d.async_actor_class().remote() for _ in range(n_cpu)]

        @ray.remote
        def async_actor_work(actors: list[Any]) -> None:
            ray.get([actors[i % n_cpu].small_value.remote() for i in range(5000)])

        return lambda: ray.get([async_actor_work.remote(actors) for _ in range(4)])

    return [
        Row("1:1 async-actor calls sync", one(1, False), 1, needs),
        Row("1:1 async-actor calls async", one(1000, False), 1000, needs),
        Row("1:1 async-actor calls with args async", one(1000, True), 1000, needs),
        Row("1:n async-actor calls async", one_to_n, 5000 * n_cpu, needs),
        Row("n:n async-actor calls async", n_to_n, 4 * 5000, needs),
    ]


def _placement_group_row(ray: Any, util: Any) -> Callable[[], object]:
    """Ray's row: 100 one-bundle groups of a custom resource, waited for, then removed."""

    def create_removal() -> None:
        pgs = [util.placement_group(bundles=[{"custom": 0.001}]) for _ in range(100)]
        for pg in pgs:
            pg.wait(timeout_seconds=30)
        for pg in pgs:
            util.remove_placement_group(pg)

    return create_removal


def _unavailable(_: Any) -> Callable[[], object]:
    raise AssertionError("a row that needs a private feature is always skipped")


# --- feature probes ------------------------------------------------------------


PROBE_TIMEOUT_S = 90.0


def _probe(what: str, action: Callable[[], object]) -> str | None:
    """None when ``action`` works; otherwise why the rows that need ``what`` are skipped.

    The probe runs in a thread of its own, so a host that hangs on the feature
    (rather than raising) costs ``PROBE_TIMEOUT_S``, not the run.
    """
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            action()
        except BaseException as error:  # noqa: BLE001 - any failure means "not available"
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt, name=f"probe {what}", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    if not outcome:
        return f"{what}: the probe got no answer in {PROBE_TIMEOUT_S:g} s (hang)"
    error = outcome[0]
    if error is None:
        return None
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{what} not available on this target ({type(error).__name__}: {first[:160]})"


def probe_features(ray: Any, defs: _Defs, needed: set[str]) -> dict[str, str | None]:
    """What each ``needs`` tag in ``needed`` resolves to: None (available) or why to skip."""
    features: dict[str, str | None] = {
        "ray_private_core_worker": "uses Ray's private CoreWorker hooks "
                                   "(add_object_out_of_scope_callback), not part of the "
                                   "Ray-compatible API",
    }

    def actors() -> None:
        actor_cls = defs.actor_classes()[0]
        a = actor_cls.remote()
        assert ray.get(a.small_value.remote(), timeout=60) == b"ok"

    def async_actors() -> None:
        a = defs.async_actor_class().remote()
        assert ray.get(a.small_value.remote(), timeout=60) == b"ok"

    if needed & {"actors", "async_actors"}:
        features["actors"] = _probe("actors", actors)
    if "async_actors" in needed:
        features["async_actors"] = (features["actors"] if features["actors"]
                                    else _probe("async actors", async_actors))
    if "placement_groups" in needed:
        features["placement_groups"] = _probe(
            "placement groups", lambda: (defs.util().placement_group,
                                         defs.util().remove_placement_group))
    return features


# --- timing (Ray's timeit) -----------------------------------------------------


@dataclass(slots=True)
class Timing:
    warmup_s: float = 0.5
    samples: int = 4
    sample_s: float = 1.0


def timeit(fn: Callable[[], object], multiplier: float, timing: Timing) -> list[float]:
    """Ray's ``timeit``: a counted warm-up, then samples of whole steps; rates per second."""
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < timing.warmup_s:
        fn()
        _Watchdog.tick()
        count += 1
    step = count // 10 + 1
    rates = []
    for _ in range(timing.samples):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < timing.sample_s:
            for _ in range(step):
                fn()
                _Watchdog.tick()
            count += step
        rates.append(multiplier * count / (time.perf_counter() - start))
    return rates


def _load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _summary(name: str, values: list[float], unit: str) -> Result:
    return Result(name=name, mean=statistics.fmean(values),
                  stdev=statistics.pstdev(values) if len(values) > 1 else 0.0,
                  unit=unit, samples=values)


def run_row(row: Row, ray: Any, features: dict[str, str | None], timing: Timing) -> Result:
    load = _load_1m()
    for need in row.needs:
        if features.get(need):
            return Result(row.name, None, None, PER_SECOND, skipped=features[need], load_1m=load)
    try:
        fn = row.make(ray)
        rates = timeit(fn, row.multiplier, timing)
    except Exception as error:  # noqa: BLE001 - one row failing must not stop the run
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        return Result(row.name, None, None, PER_SECOND, error=detail[:300], load_1m=load)
    result = _summary(row.name, rates, PER_SECOND)
    result.load_1m = load
    return result


# --- startup, in fresh interpreters --------------------------------------------


def _startup_once(target: str) -> dict[str, float]:
    """Run in a fresh interpreter: init() -> first task result -> shutdown()."""
    started = time.perf_counter()
    ray = importlib.import_module(target)
    imported = time.perf_counter()

    @ray.remote
    def one() -> int:
        return 1

    ray.init()
    initialized = time.perf_counter()
    assert ray.get(one.remote()) == 1
    first = time.perf_counter()
    ray.shutdown()
    stopped = time.perf_counter()
    return {"import_s": imported - started, "init_s": initialized - imported,
            "first_result_s": first - imported, "shutdown_s": stopped - first}


def startup_rows(target: str, runs: int, python: str) -> list[Result]:
    samples: list[dict[str, float]] = []
    errors: list[str] = []
    load = _load_1m()
    for _ in range(runs):
        proc = subprocess.run([python, os.path.abspath(__file__), "--startup-once",
                               "--target", target], capture_output=True, text=True,
                              timeout=300, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            errors.append((proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
            continue
        samples.append(json.loads(lines[-1]))
    names = [("init() to first task result", "first_result_s"), ("init()", "init_s"),
             ("shutdown()", "shutdown_s")]
    out = []
    for name, key in names:
        if not samples:
            out.append(Result(name, None, None, SECONDS, error=errors[0], load_1m=load))
            continue
        result = _summary(name, [s[key] for s in samples], SECONDS)
        result.load_1m = load
        out.append(result)
    return out


# --- machine, output, compare ------------------------------------------------------


def _memcpy_gb_per_s() -> float:
    """``np.copyto`` of the 800 MB array of the put row into touched memory (best of 3)."""
    import numpy as np

    src = np.zeros(100 * 1024 * 1024, dtype=np.int64)
    src[::512] = 1
    dst = np.ones_like(src)
    best = min(_seconds(lambda: np.copyto(dst, src)) for _ in range(3))
    return round(src.nbytes / best / 1e9, 2)


def _seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def machine_info(load_start: float | None) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "processor": platform.processor(),
        "load_1m_start": load_start, "load_1m_end": _load_1m(),
        "memcpy_gb_per_s": _memcpy_gb_per_s(),
    }


def format_value(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return f"skipped: {result['skipped']}"
    if result.get("error"):
        return f"error: {result['error']}"
    return f"{_num(result['mean'])} ± {_num(result['stdev'])} {result['unit']}"


def compare(path_a: str, path_b: str) -> str:
    """A table of both runs with the ratio A/B per row (and which one is better)."""
    with open(path_a) as f:
        a = json.load(f)
    with open(path_b) as f:
        b = json.load(f)
    label_a = f"{a['target']} {a.get('version', '')}".strip()
    label_b = f"{b['target']} {b.get('version', '')}".strip()
    by_name_b = {r["name"]: r for r in b["results"]}
    names = [r["name"] for r in a["results"]]
    names += [n for n in by_name_b if n not in names]
    by_name_a = {r["name"]: r for r in a["results"]}
    lines = [f"| row | unit | {label_a} (A) | {label_b} (B) | A/B | better |",
             "|---|---|---:|---:|---:|---|"]
    for name in names:
        ra, rb = by_name_a.get(name), by_name_b.get(name)
        cell_a = _cell(ra)
        cell_b = _cell(rb)
        ratio = better = ""
        if ra and rb and ra.get("mean") and rb.get("mean"):
            r = ra["mean"] / rb["mean"]
            ratio = f"{r:.2f}x"
            higher_better = ra["unit"] != SECONDS
            a_wins = r > 1 if higher_better else r < 1
            factor = r if higher_better else 1 / r
            better = f"A {factor:.2f}x" if a_wins else f"B {1 / factor:.2f}x"
        unit = (ra or rb or {}).get("unit", "")
        lines.append(f"| {name} | {unit} | {cell_a} | {cell_b} | {ratio} | {better} |")
    return "\n".join(lines)


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "—"
    if result.get("skipped"):
        return "skipped"
    if result.get("error"):
        return "error"
    return f"{_num(result['mean'])} ± {_num(result['stdev'])}"


def _num(value: float) -> str:
    """Three significant figures or more: 7,857 / 12.4 / 0.312."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# --- main ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shoal microbenchmark",
        description="Ray's `ray microbenchmark` workloads, against shoal or Ray.")
    p.add_argument("--target", choices=("shoal", "ray"), default="shoal")
    p.add_argument("--python", metavar="PATH",
                   help="re-run this benchmark under another interpreter (e.g. a venv with Ray)")
    p.add_argument("--only", metavar="REGEX", help="run the rows whose name matches")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print a table comparing two --json files, with A/B per row")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per row")
    p.add_argument("--samples", type=int, default=4, help="timed samples per row")
    p.add_argument("--sample-seconds", type=float, default=1.0, help="seconds per sample")
    p.add_argument("--startup-runs", type=int, default=3,
                   help="fresh interpreters for the startup rows (0: leave them out)")
    p.add_argument("--startup-once", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    if args.startup_once:
        print(json.dumps(_startup_once(args.target)))
        return 0
    if args.python:
        return _rerun_under(args.python, list(sys.argv[1:] if argv is None else argv))
    return _run(args)


def _rerun_under(python: str, argv: list[str]) -> int:
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--python":
            skip = True
            continue
        if arg.startswith("--python="):
            continue
        rest.append(arg)
    return subprocess.call([python, os.path.abspath(__file__), *rest])


def _run(args: argparse.Namespace) -> int:
    try:
        ray = importlib.import_module(args.target)
    except ImportError as error:
        print(f"cannot import {args.target!r} ({error}); install it, or run with "
              f"--python PATH to use an interpreter that has it", file=sys.stderr)
        return 2
    pattern = re.compile(args.only) if args.only else None
    timing = Timing(args.warmup, args.samples, args.sample_seconds)
    load_start = _load_1m()
    version = getattr(ray, "__version__", "unknown")
    print(f"target {args.target} {version}: {os.cpu_count()} cpus, load {load_start} (1 min)",
          flush=True)
    results: list[Result] = []
    report = _Report(args, version, results, load_start)
    selected_startup = not pattern or any(
        pattern.search(n) for n in ("init() to first task result", "init()", "shutdown()"))
    if args.startup_runs > 0 and selected_startup:
        for result in startup_rows(args.target, args.startup_runs, sys.executable):
            _emit(result, results)
    ray.init()
    try:
        defs = _Defs(ray, args.target)
        selected = [r for r in rows(defs) if not pattern or pattern.search(r.name)]
        features = probe_features(ray, defs, {need for r in selected for need in r.needs})
        # Ray runs the placement-group row on a fresh cluster with a custom resource.
        late = [r for r in selected if r.name == PG_ROW and not features.get("placement_groups")]
        for row in selected:
            if row not in late:
                with _Watchdog(row.name, report):
                    _emit(run_row(row, ray, features, timing), results)
    finally:
        ray.shutdown()
    for row in late:
        ray.init(resources={"custom": 100})
        try:
            with _Watchdog(row.name, report):
                _emit(run_row(row, ray, features, timing), results)
        finally:
            ray.shutdown()
    report.write()
    return 0


def _emit(result: Result, results: list[Result]) -> None:
    results.append(result)
    print(f"{result.name} {format_value(result.to_json())}  [load {result.load_1m}]",
          flush=True)


@dataclass(slots=True)
class _Report:
    args: argparse.Namespace
    version: str
    results: list[Result]
    load_start: float | None

    def write(self) -> None:
        if not self.args.json:
            return
        doc = {"target": self.args.target, "version": self.version,
               "machine": machine_info(self.load_start),
               "timing": {"warmup_s": self.args.warmup, "samples": self.args.samples,
                          "sample_s": self.args.sample_seconds},
               "results": [r.to_json() for r in self.results]}
        with open(self.args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {self.args.json}", flush=True)


class _Watchdog:
    """One call of a row stuck past ``CALL_TIMEOUT_S`` ends the run, keeping the rows done.

    Progress is any call of the row's function returning (``timeit`` calls
    ``_Watchdog.tick``), so a row that is merely slow (Ray's ``multi client
    tasks async`` takes ~30 s a call here) is never cut, only a hung one.
    """

    last_tick = time.monotonic()

    def __init__(self, name: str, report: _Report) -> None:
        self._name, self._report = name, report
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    @classmethod
    def tick(cls) -> None:
        cls.last_tick = time.monotonic()

    def __enter__(self) -> None:
        _Watchdog.tick()
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(1.0):
            if time.monotonic() - _Watchdog.last_tick > CALL_TIMEOUT_S:
                self._fire()

    def _fire(self) -> None:
        message = f"one call ran past {CALL_TIMEOUT_S:g} s (hung?); run stopped"
        self._report.results.append(Result(self._name, None, None, PER_SECOND, error=message))
        print(f"{self._name}: {message}", flush=True)
        self._report.write()
        os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
