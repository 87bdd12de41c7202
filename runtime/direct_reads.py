"""``get`` and ``wait`` answered in the calling thread, from values this process holds.

Theory of operation
-------------------
A ``get`` of values the driver already holds (owned or fetched, inline, done
without error) needs nothing from the kernel but the values; so does a
``wait`` whose first ``num_returns`` refs are such values. ``LocalReads`` (a
mixin of ``runtime/driver.py``'s ``ProdWorkerContext``) reads them from the
kernel's object table in the calling thread, without two thread wake-ups
through trio, and leaves everything else to the kernel's calls:

* ``ready_inline``: every ref done inline here, else None (the kernel's path);
* ``first_ready``: the first ``num_returns`` done refs in the order given, if
  that many are done inline before any ref the kernel must judge;
* ``wait_here``: a driver thread (not a task thread: those can be interrupted)
  waiting on refs it owns, with no timeout, rescans after each round of the
  kernel loop (``after_round``, the only thing that can complete an object)
  instead of a kernel call that pins and unpins every ref;
* ``get_here``: the same for ``get`` of refs it owns whose values are pending
  (``get(f.remote())``): no call registered in the kernel and answered back.

Why reading another thread's kernel is safe: see ``_readable_kernel``. Ref
counts are untouched: a get or wait never changes them, and the refs the
caller holds keep the rows alive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.ids import ObjectId
from shoal.kernel.task_spec import ObjectRefInfo

if TYPE_CHECKING:
    from shoal.kernel.core_worker import CoreWorker

T = TypeVar("T")


def scan_ready(kernel: CoreWorker, refs: list[ObjectRefInfo], need: int) -> list[ObjectId] | None:
    """The first ``need`` refs (in order) done with an inline value in ``kernel``, fewer if
    fewer are; None if a stored value or an error comes first (the kernel must judge
    those). Read from a user thread: see ``LocalReads._readable_kernel``."""
    result_of = kernel.objects.result
    ready: list[ObjectId] = []
    for info in refs:
        result = result_of(info.object_id)
        if result is None:
            continue  # pending: not ready for the kernel either
        if result.stored or result.error is not None:
            return None
        ready.append(info.object_id)
        if len(ready) == need:
            break
    return ready


def _first_pending(kernel: CoreWorker, refs: list[ObjectRefInfo], start: int) -> int:
    """The index of the first ref from ``start`` not done yet (``len(refs)``: none);
    -1 if one is stored or failed (the kernel must judge)."""
    result_of = kernel.objects.result
    for index in range(start, len(refs)):
        result = result_of(refs[index].object_id)
        if result is None:
            return index
        if result.stored or result.error is not None or result.value is None:
            return -1
    return len(refs)


class LocalReads:
    """The calling-thread paths of ``get``/``wait`` (see the module docstring)."""

    address: Any
    _runtime: Any
    _lost: str
    _interrupts: dict[int, BaseException]
    _running: dict[int, Any]

    def _init_local_reads(self, runtime: Any) -> None:
        self.fast_gets = 0  # calls answered without the trio thread (introspection)
        self.fast_waits = 0
        self.polled_waits = 0
        self._progress = threading.Condition(threading.Lock())  # notified after each round
        self._progress_waiters = 0
        self._rounds = 0
        runtime.round_hooks.append(self._after_round)

    def _readable_kernel(self) -> CoreWorker | None:
        """The kernel, if a user thread may read finished values from it right now.

        Why reading another thread's kernel is safe here: the fast paths only trust an
        inline value that is done without error. Such a value never changes (objects
        are immutable; only stored objects go back to pending, for reconstruction), and
        its row cannot be freed while the caller holds a ref to it. A dict lookup and
        attribute reads are atomic under the GIL; anything else is a miss, and the call
        takes the kernel's path. A task thread with an interrupt pending also does.
        """
        if self._lost or (self._interrupts and threading.get_ident() in self._interrupts):
            return None
        return self._runtime.kernel

    def ready_inline(self, refs: list[ObjectRefInfo]) -> list[ObjectResult] | None:
        """``get``'s answer if every ref is done with an inline value here, else None."""
        kernel = self._readable_kernel()
        if kernel is None or not refs:
            return None
        result_of = kernel.objects.result
        results: list[ObjectResult] = []
        for info in refs:
            result = result_of(info.object_id)
            if result is None or result.stored or result.error is not None or result.value is None:
                return None
            results.append(result)
        self.fast_gets += 1
        return results

    def first_ready(self, refs: list[ObjectRefInfo], num_returns: int) -> list[ObjectId] | None:
        """``wait``'s answer (the first ``num_returns`` done refs, in the order given) when
        that many are done with inline values here before any ref the kernel must judge
        (stored values, errors); else None."""
        kernel = self._readable_kernel()
        need = min(num_returns, len(refs))
        if kernel is None or need <= 0:
            return None
        ready = scan_ready(kernel, refs, need)
        if ready is None or len(ready) < need:
            return None
        self.fast_waits += 1
        return ready

    def may_wait_here(self, refs: list[ObjectRefInfo]) -> bool:
        """Whether ``wait`` may poll in the calling thread: not a task thread (whose
        waits can be interrupted), and every ref owned here (nothing to fetch)."""
        me = self.address
        return threading.get_ident() not in self._running and all(
            info.owner == me for info in refs)

    def wait_here(self, refs: list[ObjectRefInfo], num_returns: int) -> list[ObjectId] | None:
        """Waits in the calling thread until ``num_returns`` refs are done inline here,
        rescanning after each round of the kernel loop (which is what can complete one),
        instead of registering a call on every ref in the kernel and unpinning them all
        when it ends. None when the kernel must judge (a stored value, an error) or the
        cluster is lost: the caller then takes the kernel's path."""
        need = min(num_returns, len(refs))
        if need <= 0:
            return None

        def scan(kernel: CoreWorker) -> tuple[bool, list[ObjectId] | None]:
            ready = scan_ready(kernel, refs, need)
            if ready is None or len(ready) < need:
                return ready is None, None
            self.polled_waits += 1
            return True, ready

        return self._poll_rounds(scan)

    def get_here(self, refs: list[ObjectRefInfo]) -> list[ObjectResult] | None:
        """``get`` without the kernel for refs owned here whose values are still pending:
        waits in the calling thread (as ``wait_here``) until each is done inline. None
        when the kernel must judge (a ref it does not hold, a stored value, an error),
        or for a task thread or a lost cluster: the caller then takes the kernel's path.
        Saves registering the call in the kernel and answering it, per blocking get."""
        kernel = self._readable_kernel()
        if kernel is None or not refs or not self.may_wait_here(refs):
            return None
        objects = kernel.objects
        if not all(info.object_id in objects for info in refs):
            return None
        position = 0  # every ref before it is done: no need to look at them again

        def scan(kernel: CoreWorker) -> tuple[bool, list[ObjectResult] | None]:
            nonlocal position
            position = _first_pending(kernel, refs, position)
            if position < 0:
                return True, None
            return (True, self.ready_inline(refs)) if position == len(refs) else (False, None)

        return self._poll_rounds(scan)

    def _poll_rounds(self, scan: Callable[[CoreWorker], tuple[bool, T | None]]) -> T | None:
        """Runs ``scan`` now and after each round of the kernel loop until it says it is
        done (returning its value) or the kernel cannot be read (None)."""
        progress = self._progress
        with progress:
            self._progress_waiters += 1
        try:
            while (kernel := self._readable_kernel()) is not None:
                seen = self._rounds
                done, value = scan(kernel)
                if done:
                    return value
                with progress:
                    while self._rounds == seen and not self._lost:
                        progress.wait()
            return None
        finally:
            with progress:
                self._progress_waiters -= 1

    def _after_round(self) -> None:
        """The kernel loop ran a round: wake the threads polling in ``wait_here``."""
        self._rounds += 1
        if self._progress_waiters:
            with self._progress:
                self._progress.notify_all()

    def wake_pollers(self) -> None:
        """The cluster is lost: pollers see ``_lost`` and take the kernel's path."""
        with self._progress:
            self._progress.notify_all()
