"""The membership workload's view checker still sees what it must, however cheaply.

It skips records it already checked (the same immutable NodeInfo) and finds the
changed ones by identity; these tests break a settled raylet's view by hand and
check that each kind of regression is reported.
"""

from __future__ import annotations

from random import Random

import msgspec

from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Started
from shoal.sim import RunConfig, run_simulation
from shoal.sim.workloads.membership import MembershipWorkload


def _settled() -> MembershipWorkload:
    workload = MembershipWorkload(Random(7))
    result = run_simulation(RunConfig(seed=7, nodes=3, until_s=3), workload)
    assert not result.violations, result.violations
    return workload


def _observe_raylet(workload: MembershipWorkload, node: str) -> list[str]:
    proc = workload._raylets[NodeId(node)]
    workload._sim.engine.stopped = False
    workload.observe(proc, Started(), [])
    return workload._sim.violations


def _view(workload: MembershipWorkload, node: str):  # type: ignore[no-untyped-def]
    return workload._raylets[NodeId(node)].kernel.membership.view


def test_a_record_going_back_in_incarnation_is_reported() -> None:
    workload = _settled()
    view = _view(workload, "n1")
    old = view.nodes[NodeId("n2")]
    assert old.incarnation == 1
    view.nodes[NodeId("n2")] = msgspec.structs.replace(old, incarnation=0)
    view.version += 1
    violations = _observe_raylet(workload, "n1")
    assert len(violations) == 1
    assert "view of 'n2' went back from incarnation 1 to 0" in violations[0]


def test_a_reordered_view_with_a_regression_is_reported() -> None:
    workload = _settled()
    view = _view(workload, "n0")
    nodes = dict(reversed(view.nodes.items()))  # a full snapshot in another order
    old = nodes[NodeId("n1")]
    nodes[NodeId("n1")] = msgspec.structs.replace(old, incarnation=0)
    view.nodes = nodes
    view.version += 1
    violations = _observe_raylet(workload, "n0")
    assert len(violations) == 1 and "view of 'n1' went back" in violations[0]


def test_the_view_version_going_back_is_reported() -> None:
    workload = _settled()
    view = _view(workload, "n2")
    view.version -= 1
    violations = _observe_raylet(workload, "n2")
    assert len(violations) == 1 and "node-table view went back from version" in violations[0]


def test_a_changed_record_that_does_not_go_back_is_accepted() -> None:
    workload = _settled()
    view = _view(workload, "n1")
    old = view.nodes[NodeId("n0")]
    view.nodes[NodeId("n0")] = msgspec.structs.replace(old, incarnation=old.incarnation + 1)
    view.version += 1
    assert _observe_raylet(workload, "n1") == []
