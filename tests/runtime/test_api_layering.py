"""The API layer is host-agnostic: it imports only the standard library, cloudpickle,
msgspec and shoal.kernel (never trio, grpc, shoal.transports or shoal.sim)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "runtime" / "api"
THIRD_PARTY_ALLOWED = {"cloudpickle", "msgspec"}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda p: p.name)
def test_api_imports_only_stdlib_cloudpickle_msgspec_and_kernel(path: Path) -> None:
    for line, module in _imports(path):
        top = module.split(".")[0]
        if top == "shoal":
            assert module.startswith(("shoal.kernel", "shoal.runtime.api")), (
                f"{path.name}:{line}: the API layer must not import {module}")
            continue
        assert top in sys.stdlib_module_names or top in THIRD_PARTY_ALLOWED, (
            f"{path.name}:{line}: the API layer must not import {module}")
