"""Architecture rules of DESIGN.md and STYLE.md, checked by parsing the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernel", "transports", "sim", "runtime", "chaos", "shoal")

# What each layer may import from shoal (besides itself).
ALLOWED = {
    "kernel": set(),
    "transports": {"kernel"},
    "runtime": {"kernel", "transports"},
    "sim": {"kernel", "runtime.api"},
    "chaos": {"kernel", "transports", "runtime", "sim"},
    "shoal": {"kernel", "transports", "runtime", "sim"},
}
# Modules the CLI may additionally import.
CLI_EXTRA = {"sim", "chaos"}

KERNEL_FORBIDDEN = {
    "time", "datetime", "random", "uuid", "secrets", "os", "socket", "threading",
    "asyncio", "trio", "logging", "structlog", "subprocess", "select", "signal",
    "shutil", "tempfile", "pathlib", "io", "multiprocessing", "concurrent", "grpc",
}


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """Every (line, module, imported names) in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, tuple(a.name for a in node.names)))
    return found


def test_every_package_has_files() -> None:
    for package in ("kernel", "sim", "runtime", "shoal"):
        assert _py_files(package), f"{package}/ has no Python files"


@pytest.mark.parametrize("path", _py_files("kernel"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernel_does_no_io_reads_no_clock_draws_no_global_randomness(path: Path) -> None:
    for line, module, names in _imports(path):
        top = module.split(".")[0]
        if top == "random":
            assert names == ("Random",), (
                f"{path.name}:{line}: kernel may only use a seeded random.Random, "
                f"not {names or module}")
            continue
        assert top not in KERNEL_FORBIDDEN, f"{path.name}:{line}: kernel imports {module}"
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        assert not isinstance(node, ast.AsyncFunctionDef), (
            f"{path.name}:{node.lineno}: kernel has an async def")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"hash", "id", "open", "print", "input"}, (
                f"{path.name}:{node.lineno}: kernel calls {node.func.id}()")


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package: str) -> None:
    for path in _py_files(package):
        is_cli = path.name == "cli.py" and package == "runtime"
        allowed = ALLOWED[package] | (CLI_EXTRA if is_cli else set())
        for line, module, _ in _imports(path):
            if not module.startswith("shoal."):
                continue
            layer = module.split(".")[1]
            if layer == package:
                continue
            ok = any(module == f"shoal.{a}" or module.startswith(f"shoal.{a}.")
                     or (a == layer and "." not in a) for a in allowed)
            assert ok, f"{path.relative_to(ROOT)}:{line}: {package} must not import {module}"


def test_kernel_is_imported_as_shoal_kernel_only() -> None:
    for package in PACKAGES:
        for path in _py_files(package):
            for line, module, _ in _imports(path):
                top = module.split(".")[0]
                assert top not in {"kernel", "transports", "sim", "runtime", "chaos"}, (
                    f"{path.relative_to(ROOT)}:{line}: import shoal.{module}, not {module}")
