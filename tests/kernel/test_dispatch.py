"""Type-keyed dispatch (kernel/dispatch.py) keeps what ``match`` gave the kernels.

Subclasses of a served message are handled as their base (``isinstance``
semantics), and a message nobody serves is rejected with the documented reason.
"""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.dispatch import handler_for
from shoal.kernel.gcs import Gcs
from shoal.kernel.gcs.protocol import RegisterNode
from shoal.kernel.ids import NodeId, seconds
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, Started, TimerFired
from shoal.kernel.raylet import Raylet, RayletConfig

N1 = NodeId("n1")
GCS = Address(node=NodeId("n0"), component="gcs")
R1 = Address(node=N1, component="raylet")
DRIVER = Address(node=N1, component="driver")
T0 = seconds(100)


class _Base(Msg):
    pass


class _Child(_Base):
    pass


class _Other(Msg):
    pass


class _LateRegister(RegisterNode):
    """A subclass the GCS's table does not name: it must be served as a RegisterNode."""


class _Unserved(Msg):
    what: str = "nothing"


def test_handler_for_finds_own_then_nearest_base_and_remembers_it() -> None:
    table: dict[type, str] = {_Base: "base", Msg: "any message"}
    assert handler_for(table, _Base) == "base"
    assert handler_for(table, _Child) == "base"  # nearest base, not Msg
    assert table[_Child] == "base"  # remembered: the next lookup is one probe
    assert handler_for({_Base: "base"}, _Other) is None


def _started_gcs() -> Gcs:
    gcs = Gcs()
    gcs.handle(Started(), now=T0)
    return gcs


def test_a_subclass_of_a_served_message_is_handled_as_its_base() -> None:
    plain, late = _started_gcs(), _started_gcs()
    fields = dict(node_id=N1, boot=1, attempt=1, resources={"CPU": 1.0})
    effects = plain.handle(Received(src=R1, msg=RegisterNode(**fields)), now=T0)
    assert effects  # registered: a reply and a durable write, at least
    assert late.handle(Received(src=R1, msg=_LateRegister(**fields)), now=T0) == effects
    assert plain.nodes.rows == late.nodes.rows


def _rejection(src: Address, reason: str) -> list[Msg]:
    return [Send(dst=src, msg=Rejected(request_type="_Unserved", reason=reason))]


def test_every_kernel_rejects_a_message_it_does_not_serve() -> None:
    unserved = Received(src=DRIVER, msg=_Unserved())
    assert Gcs().handle(unserved, now=T0) == _rejection(
        DRIVER, "gcs: does not serve _Unserved messages; send it to the component that owns it")
    raylet = Raylet(N1, RayletConfig(gcs=GCS))
    assert raylet.handle(unserved, now=T0) == _rejection(
        DRIVER, "raylet 'n1': does not serve _Unserved messages; send it to the component "
                "that owns it")
    core = CoreWorker(DRIVER, raylet=R1, gcs=GCS)
    assert core.handle(Received(src=R1, msg=_Unserved()), now=T0) == _rejection(
        R1, f"core worker {DRIVER}: does not serve _Unserved messages; send it to the "
            "component that owns it")


def test_an_input_no_kernel_knows_is_ignored_as_before() -> None:
    # ``match`` with no case for it returned no effects; the tables must too.
    assert Gcs().handle(_Unserved(), now=T0) == []  # type: ignore[arg-type]
    assert Raylet(N1, RayletConfig(gcs=GCS)).handle(_Unserved(), now=T0) == []  # type: ignore[arg-type]
    core = CoreWorker(DRIVER, raylet=R1, gcs=GCS)
    assert core.handle(_Unserved(), now=T0) == []  # type: ignore[arg-type]
    assert Gcs().handle(TimerFired(key="from.before.a.restart"), now=T0) == []
