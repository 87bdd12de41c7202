"""What the node daemon imports before it is ready, and that its workers still see the API.

``init()`` waits for the node daemon, and the daemon's start-up is mostly imports:
it must not import what only drivers and workers use (the API, the core worker
kernel, cloudpickle, numpy). Its zygote, and so every worker it forks, must
still see the whole ``shoal`` API (user code in tasks does ``import shoal``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal

# What a node daemon's module imports: not what only drivers and workers use, nor (until
# its zygote is forked, in main) what only the daemon uses. See runtime/node.py.
NOT_IN_THE_DAEMON = ("shoal.runtime.api", "shoal.kernel.core_worker.core_worker", "cloudpickle",
                     "numpy", "grpc")
NOT_BEFORE_THE_FORK = ("shoal.kernel.gcs.gcs", "shoal.kernel.raylet.raylet",
                       "shoal.runtime.node_objects")


def _imported_by(*args: str) -> list[str]:
    """The modules ``python -X importtime -P <args>`` imports, in order."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-P", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", proc.stderr, re.MULTILINE)


def test_the_node_daemon_imports_only_what_it_needs_to_start() -> None:
    # --help exits in main(), after every module-level import of the daemon.
    modules = _imported_by("-m", "shoal.runtime.node", "--help")
    assert "shoal.kernel.wire" in modules and "trio" in modules  # it did import
    unwanted = [m for m in modules if m.startswith(NOT_IN_THE_DAEMON + NOT_BEFORE_THE_FORK)]
    assert unwanted == []


def test_the_object_store_imports_numpy_only_when_it_makes_a_view(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, sys
        from shoal.transports.object_store import SharedMemoryStore
        store = SharedMemoryStore(f"test-startup-{{os.getpid()}}", 1 << 20, {str(tmp_path)!r})
        try:
            assert "numpy" not in sys.modules  # an open, empty store needs none
            with store.create("a", 3) as buf:
                buf[:] = b"abc"
            store.seal("a")
            assert "numpy" in sys.modules
            with store.get("a") as view:
                assert bytes(view) == b"abc"
            store.delete("a")
            store.check_invariants()
        finally:
            store.close()
    """)
    _imported_by("-c", code)


def test_the_kernel_packages_load_their_machines_on_first_use() -> None:
    code = textwrap.dedent("""
        import sys
        sys.orig_argv[:] = [sys.executable, "-P", "-m", "shoal.runtime.node", "--help"]
        import shoal.kernel.wire  # every protocol module of every kernel package
        machines = ("shoal.kernel.core_worker.core_worker", "shoal.kernel.gcs.gcs",
                    "shoal.kernel.raylet.raylet")
        assert not [m for m in machines if m in sys.modules]
        from shoal.kernel import Gcs, Raylet, gcs_address
        from shoal.kernel.core_worker import CoreWorker
        from shoal.kernel.raylet import MemberPhase
        assert (CoreWorker.__module__, Gcs.__module__, Raylet.__module__) == machines
        assert gcs_address("n1").component == "gcs" and MemberPhase.ALIVE
        import shoal.kernel.gcs
        assert shoal.kernel.gcs.KvConfig and shoal.kernel.gcs.NodePhase
        for package in ("shoal.kernel", "shoal.kernel.gcs", "shoal.kernel.raylet",
                        "shoal.kernel.core_worker"):
            try:
                exec(f"from {package} import NoSuchName")
            except ImportError as exc:
                assert "NoSuchName" in str(exc), exc
            else:
                raise AssertionError(f"{package}: an unknown name was imported")
    """)
    _imported_by("-c", code)


def test_shoal_in_a_node_daemon_binds_its_api_on_first_use() -> None:
    # As in `python -m shoal.runtime.node`: ``import shoal`` skips the API...
    code = textwrap.dedent("""
        import sys
        sys.orig_argv[:] = [sys.executable, "-P", "-m", "shoal.runtime.node", "--help"]
        import shoal
        assert "shoal.runtime.api" not in sys.modules
        assert "shoal.runtime.cluster" not in sys.modules
        assert shoal.__version__
        # ... and binds it on first use: the driver's init, not the API layer's.
        from shoal import init
        import shoal.runtime.cluster
        assert init is shoal.runtime.cluster.init
        assert shoal.remote is shoal.runtime.api.remote
        assert shoal.exceptions.RayTaskError
        missing = [name for name in shoal.__all__ if name not in vars(shoal)]
        assert missing == [], missing
        try:
            shoal.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError("an unknown name resolved")
    """)
    _imported_by("-c", code)


def test_a_user_process_gets_the_whole_api_at_import() -> None:
    code = "import sys, shoal; assert 'shoal.runtime.api' in sys.modules; shoal.init; shoal.get"
    _imported_by("-c", code)


@pytest.fixture
def cluster() -> Iterator[None]:
    shoal.init(num_cpus=1)
    try:
        yield
    finally:
        shoal.shutdown()


def test_a_worker_forked_by_the_zygote_sees_the_whole_api(cluster: None) -> None:
    @shoal.remote
    def missing_names() -> list[str]:
        import shoal as in_worker

        return [name for name in in_worker.__all__ if name not in vars(in_worker)]

    @shoal.remote
    def nested() -> int:
        import shoal as in_worker

        return int(in_worker.get(in_worker.put(41))) + 1

    assert shoal.get(missing_names.remote()) == []
    assert shoal.get(nested.remote()) == 42
