"""Core worker actors: bookkeeping that stays proportional to what changed."""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker, CoreWorkerConfig
from shoal.kernel.core_worker.actor_protocol import ActorCallSubmitted
from shoal.kernel.core_worker.actors import ActorCallerConfig
from shoal.kernel.gcs.actor_protocol import ActorDeathCause, ActorInfo
from shoal.kernel.ids import ActorId, TaskId
from shoal.kernel.messages import Started
from shoal.kernel.task_spec import TaskSpec

from tests.kernel.test_actor_submission import DRIVER, GCS, RAYLET, table


def test_dead_actors_past_the_bound_are_forgotten_oldest_first() -> None:
    config = CoreWorkerConfig(actors=ActorCallerConfig(dead_entries_max=2))
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS, config=config)
    core.handle(Started(), now=0)
    actors = [ActorId(f"a{i}") for i in range(4)]
    for i, actor_id in enumerate(actors):
        spec = TaskSpec(task_id=TaskId(f"t{i}"), job_id="j", name="C.f", owner=DRIVER,
                        function_id="f", args=(), resources={})
        core.handle(ActorCallSubmitted(actor_id=actor_id, spec=spec), now=1)
    death = ActorDeathCause(kind="killed", message="gone")
    for version, actor_id in enumerate(actors, start=2):
        core.handle(table(ActorInfo(actor_id=actor_id, state="DEAD", version=version,
                                    death=death)), now=version)
        core.check_invariants()
    assert [core.actors.info(a) is not None for a in actors] == [False, False, True, True]
    assert core.actors.pending_calls == 0, "every call failed with the death"
