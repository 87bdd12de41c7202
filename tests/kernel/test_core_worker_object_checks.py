"""The object table's invariant check follows what each step changed.

``check_invariants`` checks every row whose phase, result or counts changed
since the last call, so a row broken by a step is caught right after it,
however many other rows there are; when checks have not run for a long while,
the next one checks every row.
"""

from __future__ import annotations

import pytest

from shoal.kernel.core_worker.objects import _SWEEP_BUDGET, _TOUCHED_MAX, ObjectTable
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.ids import NodeId, ObjectId
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import ObjectRefInfo

ME = Address(node=NodeId("n0"), component="driver")
OTHER = Address(node=NodeId("n1"), component="worker", worker="w1")
ROWS = 40 * _SWEEP_BUDGET  # far more rows than one check's rotation covers


def table_with_rows(count: int) -> tuple[ObjectTable, list[ObjectRefInfo]]:
    objects = ObjectTable(ME, fetch_retry_ns=1)
    infos = [ObjectRefInfo(object_id=ObjectId(f"o{i:05d}"), owner=OTHER) for i in range(count)]
    for info in infos:
        objects.change_local(info, +1)
    objects.check_invariants()  # everything checked: a clean start
    return objects, infos


def test_a_row_broken_by_a_step_is_caught_by_the_check_after_it() -> None:
    for victim in (0, ROWS // 2, ROWS - 1):  # wherever the rotation happens to be
        objects, infos = table_with_rows(ROWS)
        row = objects._refs[infos[victim].object_id]
        row.contained = -1  # the kind of damage a buggy step would do ...
        objects.change_tasks(infos[victim], +1)  # ... to a row the step went through
        with pytest.raises(InvariantViolation, match=r"^core_worker: object .* negative count"):
            objects.check_invariants()


def test_rows_changed_while_checks_were_off_are_all_checked_at_the_next_check() -> None:
    objects, infos = table_with_rows(ROWS)
    objects._refs[infos[1].object_id].contained = -1
    objects.change_tasks(infos[1], +1)
    extra = [ObjectRefInfo(object_id=ObjectId(f"x{i:05d}"), owner=OTHER)
             for i in range(_TOUCHED_MAX + 1)]
    for info in extra:  # a long run without checks: the record of changes overflows
        objects.change_local(info, +1)
    assert len(objects._touched) <= _TOUCHED_MAX  # bounded when nobody checks
    with pytest.raises(InvariantViolation, match=r"negative count"):
        objects.check_invariants()


def test_a_clean_table_passes_and_freed_rows_are_not_checked() -> None:
    objects, infos = table_with_rows(ROWS)
    for info in infos[: ROWS // 2]:
        objects.change_local(info, -1)  # freed: gone from the table
    objects.check_invariants()
    assert len(objects) == ROWS - ROWS // 2
