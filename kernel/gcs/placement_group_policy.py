"""Where the bundles of a placement group go: the four strategies over the resource view.

``place_bundles`` is a pure function of the bundles still to place, the nodes
that already hold the group's other bundles (``fixed``), and a copy of each
live node's available resources (which it debits as it places, so that the
caller can place several groups in one pass without double-booking a node).
Ties are always broken by node id, so the result is deterministic.

* ``PACK``: as few nodes as possible: each bundle goes to a node the group
  already uses if it fits there, else to the node with the most free CPU
  (then id). Soft: spreads when it must.
* ``STRICT_PACK``: every bundle of the group on one node (the node of the
  fixed bundles if there are any), or nowhere.
* ``SPREAD``: each bundle to a node the group does not use yet if one fits,
  else to the least used node that fits.
* ``STRICT_SPREAD``: every bundle on a different node, or nowhere.

Returns ``(placement, reason)``: ``placement`` maps each bundle index to a node,
or is None with ``reason`` saying why nothing could be placed now.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.kernel.ids import NodeId

Avail = dict[NodeId, dict[str, float]]
_EPS = 1e-9


def fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(name, 0.0) + _EPS >= amount for name, amount in need.items())


def _take(avail: Avail, node: NodeId, need: Mapping[str, float]) -> None:
    have = avail[node]
    for name, amount in need.items():
        have[name] = have.get(name, 0.0) - amount


def _sum(shapes: list[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for shape in shapes:
        for name, amount in shape.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def _roomiest(candidates: list[NodeId], avail: Avail) -> list[NodeId]:
    return sorted(candidates, key=lambda n: (-avail[n].get("CPU", 0.0), n))


def place_bundles(strategy: str, todo: list[tuple[int, Mapping[str, float]]],
                  fixed: list[NodeId], avail: Avail) -> tuple[dict[int, NodeId] | None, str]:
    """Places ``todo`` bundles per ``strategy``; debits ``avail`` only on success."""
    work = {node: dict(have) for node, have in avail.items()}
    match strategy:
        case "STRICT_PACK":
            placement, reason = _strict_pack(todo, fixed, work)
        case "STRICT_SPREAD":
            placement, reason = _spread(todo, fixed, work, strict=True)
        case "SPREAD":
            placement, reason = _spread(todo, fixed, work, strict=False)
        case _:
            placement, reason = _pack(todo, fixed, work)
    if placement is not None:
        avail.clear()
        avail.update(work)
    return placement, reason


def _no_room(index: int, shape: Mapping[str, float], why: str = "") -> str:
    return (f"bundle {index} {dict(shape)!r} fits on no live node's free resources"
            f"{why}; it is placed once resources free up or nodes join")


def _strict_pack(todo: list[tuple[int, Mapping[str, float]]], fixed: list[NodeId],
                 avail: Avail) -> tuple[dict[int, NodeId] | None, str]:
    need = _sum([shape for _, shape in todo])
    if fixed:
        candidates = [fixed[0]] if fixed[0] in avail else []
    else:
        candidates = _roomiest(list(avail), avail)
    for node in candidates:
        if fits(need, avail[node]):
            _take(avail, node, need)
            return {index: node for index, _ in todo}, ""
    return None, (f"no live node has {need!r} free for all bundles together "
                  "(STRICT_PACK); it is placed once one does")


def _pack(todo: list[tuple[int, Mapping[str, float]]], fixed: list[NodeId],
          avail: Avail) -> tuple[dict[int, NodeId] | None, str]:
    used = [n for n in dict.fromkeys(fixed) if n in avail]
    placement: dict[int, NodeId] = {}
    for index, shape in todo:
        order = used + [n for n in _roomiest(list(avail), avail) if n not in used]
        node = next((n for n in order if fits(shape, avail[n])), None)
        if node is None:
            return None, _no_room(index, shape)
        _take(avail, node, shape)
        placement[index] = node
        if node not in used:
            used.append(node)
    return placement, ""


def _spread(todo: list[tuple[int, Mapping[str, float]]], fixed: list[NodeId], avail: Avail,
            *, strict: bool) -> tuple[dict[int, NodeId] | None, str]:
    count: dict[NodeId, int] = {}
    for node in fixed:
        count[node] = count.get(node, 0) + 1
    placement: dict[int, NodeId] = {}
    for index, shape in todo:
        fitting = [n for n in sorted(avail) if fits(shape, avail[n])]
        if strict:
            fitting = [n for n in fitting if not count.get(n)]
        if not fitting:
            why = " apart from the group's other bundles (STRICT_SPREAD)" if strict else ""
            return None, _no_room(index, shape, why)
        node = min(fitting, key=lambda n: (count.get(n, 0), -avail[n].get("CPU", 0.0), n))
        _take(avail, node, shape)
        placement[index] = node
        count[node] = count.get(node, 0) + 1
    return placement, ""
