"""The raylet's copy of the resource view: each update leaves exactly what it says.

``ClusterView.apply`` reuses the units of rows unchanged since the last update
and keeps entries that already say what the row says; these tests pin that a
reservation made since (which changes ``available`` in place) is undone by the
next update, repeated rows included, and that changed or removed rows apply.
"""

from __future__ import annotations

from shoal.kernel.gcs.resource_protocol import NodeResources, ResourceViewUpdate
from shoal.kernel.ids import NodeId
from shoal.kernel.raylet.resources import UNITS_PER_RESOURCE, ClusterView

N1, N2 = NodeId("n1"), NodeId("n2")
U = UNITS_PER_RESOURCE


def row(node: NodeId, available: float, total: float = 4.0, incarnation: int = 1) -> NodeResources:
    return NodeResources(node_id=node, incarnation=incarnation, total={"CPU": total},
                         available={"CPU": available})


def update(version: int, *rows: NodeResources, full: bool = False,
           removed: tuple[NodeId, ...] = ()) -> ResourceViewUpdate:
    return ResourceViewUpdate(epoch=1, from_version=0 if full else version - 1,
                              to_version=version, full=full, entries=rows, removed=removed)


def available(view: ClusterView) -> dict[NodeId, dict[str, int]]:
    return {node: dict(entry.available) for node, entry in view.entries.items()}


def test_a_repeated_row_undoes_a_reservation_made_since() -> None:
    view = ClusterView()
    assert view.apply(update(1, row(N1, 4.0), row(N2, 2.0), full=True))
    view.reserve(N1, {"CPU": 3 * U})
    assert available(view) == {N1: {"CPU": 1 * U}, N2: {"CPU": 2 * U}}
    assert view.apply(update(2, row(N1, 4.0), row(N2, 2.0)))  # the same rows again
    assert available(view) == {N1: {"CPU": 4 * U}, N2: {"CPU": 2 * U}}
    view.reserve(N2, {"CPU": 1 * U})
    assert view.apply(update(3, row(N2, 2.0)))
    assert available(view)[N2] == {"CPU": 2 * U}


def test_changed_removed_and_snapshot_rows_apply() -> None:
    view = ClusterView()
    view.apply(update(1, row(N1, 4.0), row(N2, 2.0), full=True))
    view.apply(update(2, row(N1, 1.0, incarnation=2)))
    assert view.entries[N1].incarnation == 2
    assert available(view)[N1] == {"CPU": 1 * U}
    view.apply(update(3, removed=(N2,)))
    assert list(view.entries) == [N1]
    view.apply(update(7, row(N2, 3.0, total=8.0), full=True))  # a snapshot replaces all
    assert list(view.entries) == [N2]
    assert (view.entries[N2].total, available(view)[N2]) == ({"CPU": 8 * U}, {"CPU": 3 * U})
    view.apply(update(8, row(N1, 4.0)))  # back after the snapshot dropped it: fresh units
    assert available(view)[N1] == {"CPU": 4 * U}
