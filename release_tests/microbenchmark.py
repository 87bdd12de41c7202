"""Ray's ``ray microbenchmark`` workloads, against shoal (default) or Ray: a thin entry point.

The benchmark lives in ``runtime/microbenchmark.py`` (``shoal.runtime.microbenchmark``,
also run by ``shoal microbenchmark``); see its docstring for the rows and options.

Usage::

    python release_tests/microbenchmark.py [--target shoal|ray] [--only REGEX] [--json FILE]
    python release_tests/microbenchmark.py --target ray --python /tmp/rayvenv/bin/python
    python release_tests/microbenchmark.py --compare shoal.json ray.json

Under an interpreter without shoal installed (a venv that has only Ray), the
core module is loaded by its path, so ``/tmp/rayvenv/bin/python
release_tests/microbenchmark.py --target ray`` works too.
"""

from __future__ import annotations

import importlib.util
import os
import sys

CORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "runtime",
                    "microbenchmark.py")


def _core() -> object:
    try:
        from shoal.runtime import microbenchmark
    except ImportError:  # an interpreter without shoal (e.g. one that has only Ray)
        spec = importlib.util.spec_from_file_location("shoal_microbenchmark", CORE)
        assert spec is not None and spec.loader is not None
        microbenchmark = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = microbenchmark
        spec.loader.exec_module(microbenchmark)
    return microbenchmark


if __name__ == "__main__":
    sys.exit(_core().main())  # type: ignore[attr-defined]
