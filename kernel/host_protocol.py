"""Messages that hosts exchange over the kernels' transports, which no kernel handles.

They ride in ``Envelope``s like kernel messages (so the transports, the
authentication and the routing are the same), but the receiving host takes them
before its kernels see anything.

``WorkerOutput``: lines a task or actor printed in a worker process, sent to the
driver of the task's job, which prints them with their prefix (Ray's
``log_to_driver``; see ``runtime/output_forwarding.py``).
"""

from __future__ import annotations

import msgspec

from shoal.kernel.messages import Msg


class OutputLine(msgspec.Struct, frozen=True, array_like=True):
    prefix: str  # "(name pid=123)" or "(name pid=123, ip=node)"
    stderr: bool
    text: str  # one line, without its newline


class WorkerOutput(Msg):
    """Worker host -> driver host: lines printed by the job's tasks, in order."""

    job_id: str
    lines: tuple[OutputLine, ...]


HOST_WIRE_TYPES: tuple[type[Msg], ...] = (WorkerOutput,)
