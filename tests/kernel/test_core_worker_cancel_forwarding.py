"""``shoal.cancel`` on a borrowed ref: the holder forwards it to the owner, which cancels."""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.protocol import (
    CancelForwarded,
    CancelRequested,
    CancelTask,
    RefsChanged,
    TaskSubmitted,
)
from shoal.kernel.messages import Address, Received, Send, Started
from shoal.kernel.task_spec import ObjectRefInfo

from tests.kernel.test_core_worker import DRIVER, GCS, RAYLET, WORKER, driver, granted, spec

HOLDER = Address(node="n0", component="worker", worker="w2")


def test_a_holder_forwards_cancel_of_a_borrowed_ref_to_its_owner() -> None:
    holder = CoreWorker(HOLDER, raylet=RAYLET, gcs=GCS)
    holder.handle(Started(), now=0)
    ref = ObjectRefInfo(object_id="t1.r0", owner=DRIVER)
    holder.handle(RefsChanged(deltas=((ref, 1),)), now=0)
    assert holder.handle(CancelRequested(object_id="t1.r0", recursive=False), now=1) == [
        Send(dst=DRIVER, msg=CancelForwarded(object_id="t1.r0", recursive=False))]


def test_the_owner_cancels_on_a_forwarded_cancel_as_if_asked_itself() -> None:
    owner = driver()
    owner.handle(TaskSubmitted(spec=spec("t1"), function=b"code"), now=0)
    granted(owner)  # t1 is pushed to WORKER
    forwarded = CancelForwarded(object_id="t1.r0", force=True)
    assert owner.handle(Received(src=HOLDER, msg=forwarded), now=1) == [
        Send(dst=WORKER, msg=CancelTask(task_id="t1", force=True))]
    # A forwarded cancel of something the owner does not know is dropped, not bounced.
    assert owner.handle(Received(src=HOLDER, msg=CancelForwarded(object_id="zz.r0")), now=2) == []
