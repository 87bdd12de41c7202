"""The shared vocabulary of every kernel: addresses, inputs and effects.

Anything that crosses a boundary (between kernels, or between a kernel and its
host) is a frozen, keyword-only, tagged ``msgspec.Struct``. Inputs are named as
past-tense facts (``TimerFired``), effects as imperative commands (``Send``).

Protocol messages that components exchange live beside the component that
serves them (``kernel/gcs/protocol.py`` ...); ``kernel/wire.py`` gathers them
into the one union the transports decode.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shoal.kernel.ids import NodeId, Seq, TimeNs

Component = Literal["gcs", "raylet", "worker", "driver"]


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Base of every input, effect and protocol message."""


class Address(msgspec.Struct, frozen=True, kw_only=True):
    """Where a component lives: its node, its kind, and (for workers) which one."""

    node: NodeId
    component: Component
    worker: str = ""

    def __str__(self) -> str:
        suffix = f"/{self.worker}" if self.worker else ""
        return f"{self.node}/{self.component}{suffix}"


# ---------------------------------------------------------------------------
# Inputs every kernel understands.


class Started(Msg):
    """The host has just started (or restarted) the process that runs this kernel."""


class Received(Msg):
    """A protocol message arrived from another component."""

    src: Address
    msg: Msg


class TimerFired(Msg):
    """A timer set with ``SetTimer(key)`` reached its deadline."""

    key: str


# ---------------------------------------------------------------------------
# Effects every host carries out.


class Send(Msg):
    """Deliver ``msg`` to the component at ``dst`` (best effort: it may be lost)."""

    dst: Address
    msg: Msg


class SetTimer(Msg):
    """Fire ``TimerFired(key)`` at ``at_ns``; replaces any pending timer with this key."""

    key: str
    at_ns: TimeNs


class CancelTimer(Msg):
    """Forget the pending timer with this key, if any."""

    key: str


class StorePut(Msg):
    """Durably write ``value`` under ``(table, key)`` before later effects are visible."""

    table: str
    key: bytes
    value: bytes


class StoreDelete(Msg):
    """Durably delete ``(table, key)``."""

    table: str
    key: bytes


# ---------------------------------------------------------------------------
# Protocol messages every component may send.


class Rejected(Msg):
    """A peer's message could not be accepted; ``reason`` says why and what to do."""

    request_type: str
    reason: str
    request_id: Seq = 0  # the id of the refused request, where it had one
