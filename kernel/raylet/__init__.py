"""The raylet kernel: one per node.

The machine's names load on first use (PEP 562): importing a protocol module of
this package (the wire format does, in every process) must not import the raylet
machine, which only node daemons and the simulator run.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.kernel.raylet.membership import MemberConfig, MemberPhase, NodeView
    from shoal.kernel.raylet.raylet import Raylet, RayletConfig, RayletInput

_MODULE_OF = {
    "MemberConfig": "membership",
    "MemberPhase": "membership",
    "NodeView": "membership",
    "Raylet": "raylet",
    "RayletConfig": "raylet",
    "RayletInput": "raylet",
}

__all__ = ["MemberConfig", "MemberPhase", "NodeView", "Raylet", "RayletConfig", "RayletInput"]


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
