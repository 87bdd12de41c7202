"""The base of the workloads that run a program and then check the cluster settles clean.

``tasks``, ``actors`` and ``placement_groups`` each run a scripted program on the
driver. A program that raises (a wrong value, an undocumented error) is a
violation. When it returns, the run goes on until every core worker and raylet
is idle with nothing held (no pending task, lease or object, nothing pinned or
being pulled) and the workload's own leaks, ``extra_leaks``, are gone; what is
still held when the liveness phase ends is reported by ``pending``.
"""

from __future__ import annotations

from typing import Any

from shoal.sim.program import ProgramWorkload


class SettlingWorkload(ProgramWorkload):
    """A program workload that ends only once nothing is left over (see the module doc)."""

    def on_main_finished(self) -> None:
        error = self.thread.error if self.thread is not None else None
        if error is not None and self._sim is not None:
            self._sim.violation(f"the {self.name} program raised {type(error).__name__}: {error}")

    def done(self) -> bool:
        return super().done() and not self._leaks(limit=1)

    def pending(self) -> str:
        if not super().done():
            return super().pending()
        return "; ".join(self._leaks(limit=5))

    def extra_leaks(self) -> list[str]:
        """What this workload adds to the common checks (GCS tables...)."""
        return []

    def gcs_kernel(self) -> Any:
        """The live GCS kernel, or None while it is down."""
        return self._gcs_proc.kernel if self._gcs_proc is not None else None

    def _leaks(self, limit: int) -> list[str]:
        out = self.extra_leaks()
        assert self.host is not None
        for address, core in self.host.core_workers():
            if core.actors.pending_calls or core.actors.pending_requests:
                out.append(f"{address} still has {core.actors.pending_calls} actor calls and "
                           f"{core.actors.pending_requests} GCS requests pending")
            if core.submitter.pending_tasks or core.submitter.lease_count:
                out.append(f"{address} still has {core.submitter.pending_tasks} tasks and "
                           f"{core.submitter.lease_count} leases")
            if len(core.objects):
                out.append(f"{address} still holds {len(core.objects)} objects")
        for node_id, proc in self._raylets.items():
            raylet = proc.kernel
            leaks = raylet.quiescence_problems() if raylet is not None else []  # type: ignore[attr-defined]
            out += [f"raylet {node_id!r}: {problem}" for problem in leaks]
        return out[:limit]
