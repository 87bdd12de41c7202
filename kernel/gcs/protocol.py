"""Messages between the GCS and its clients (raylets, drivers, workers).

Membership: a raylet registers its node with ``RegisterNode`` and receives its
incarnation in ``NodeRegistered``; it then sends a ``Heartbeat`` every interval.
A heartbeat from an incarnation the GCS has declared dead is answered with
``NodeDeclaredDead`` and the node rejoins under a new incarnation.

Node table: subscribers receive ``NodeTableUpdate`` deltas. Raylets are
subscribed by registering (their heartbeats carry the version they have seen,
so a lost update is repaired at the next beat); other components subscribe and
poll with ``SubscribeNodes``.

Internal KV: request/reply pairs matched by ``request_id``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shoal.kernel.ids import Count, NodeId, Seq
from shoal.kernel.messages import Msg

NodeState = Literal["alive", "dead"]
ResourceAmount = Annotated[float, msgspec.Meta(ge=0, le=2**40)]
Resources = dict[str, ResourceAmount]


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the node table, as the GCS publishes it."""

    node_id: NodeId
    incarnation: Count
    state: NodeState
    resources: Resources
    endpoint: str = ""
    death_cause: str = ""


# --- membership ------------------------------------------------------------


class RegisterNode(Msg):
    """A raylet asks to (re)join. ``(boot, attempt)`` orders its registrations."""

    node_id: NodeId
    boot: Seq
    attempt: Count
    resources: Resources
    endpoint: str = ""


class NodeRegistered(Msg):
    """The GCS accepted registration ``(boot, attempt)``; it is alive under ``incarnation``."""

    node_id: NodeId
    incarnation: Count
    boot: Seq
    attempt: Count


class Heartbeat(Msg):
    """A raylet is alive; ``view_version`` is the node-table version it has applied."""

    node_id: NodeId
    incarnation: Count
    view_version: Seq


class NodeDeclaredDead(Msg):
    """The GCS considers this incarnation dead; the node must register again.

    ``attempt`` is set when the answer is to a registration whose ``(boot,
    attempt)`` belongs to an incarnation already dead, so a node still waiting
    for that registration's answer knows to try its next attempt.
    """

    node_id: NodeId
    incarnation: Count
    cause: str
    attempt: Count = 0


class UnregisterNode(Msg):
    """A raylet is shutting down cleanly and leaves the cluster."""

    node_id: NodeId
    incarnation: Count


class SubscribeNodes(Msg):
    """Subscribe to (and poll) the node table from ``known_version`` on."""

    known_version: Seq


class NodeTableUpdate(Msg):
    """Rows changed in ``(from_version, to_version]``; a full table when ``full``."""

    from_version: Seq
    to_version: Seq
    full: bool
    nodes: tuple[NodeInfo, ...]


# --- internal KV -----------------------------------------------------------


class KvPut(Msg):
    request_id: Seq
    namespace: str
    key: bytes
    value: bytes
    overwrite: bool = True


class KvPutReply(Msg):
    request_id: Seq
    added: bool


class KvGet(Msg):
    request_id: Seq
    namespace: str
    key: bytes


class KvGetReply(Msg):
    request_id: Seq
    value: bytes | None


class KvDelete(Msg):
    request_id: Seq
    namespace: str
    key: bytes
    by_prefix: bool = False


class KvDeleteReply(Msg):
    request_id: Seq
    deleted: Count


class KvList(Msg):
    request_id: Seq
    namespace: str
    prefix: bytes


class KvListReply(Msg):
    request_id: Seq
    keys: tuple[bytes, ...]


class KvExists(Msg):
    request_id: Seq
    namespace: str
    key: bytes


class KvExistsReply(Msg):
    request_id: Seq
    exists: bool


KvRequest = KvPut | KvGet | KvDelete | KvList | KvExists
