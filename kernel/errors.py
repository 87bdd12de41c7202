"""Errors raised by kernels for their own bugs (never for bad peer input).

STYLE.md, section 4: stale input is a no-op, bad peer input becomes a rejection
effect, and only a broken invariant or an impossible transition raises.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base of the errors a kernel raises when its own logic is wrong."""


class InvalidTransition(KernelError):
    """An entity was asked to move between two phases that have no legal move."""

    def __init__(self, component: str, action: str, entity: object, phase: str, expected: str):
        super().__init__(
            f"{component}: cannot {action} {entity!r} in phase {phase}; expected {expected}"
        )
        self.component = component
        self.entity = entity
        self.phase = phase


class InvariantViolation(KernelError, AssertionError):
    """A cross-index consistency check found state that cannot happen."""
