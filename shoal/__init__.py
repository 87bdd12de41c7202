"""shoal: Ray's programming model on sans-IO kernels, with a deterministic simulator.

``import shoal as ray`` is the intended use. The public API is re-exported here
as it lands; see README.md for what works today.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
