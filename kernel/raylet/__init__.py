"""The raylet kernel: one per node."""

from shoal.kernel.raylet.membership import MemberConfig, MemberPhase, NodeView
from shoal.kernel.raylet.raylet import Raylet, RayletConfig, RayletInput

__all__ = ["MemberConfig", "MemberPhase", "NodeView", "Raylet", "RayletConfig", "RayletInput"]
