"""shoal.sim: a whole cluster in one process, on virtual time, replayable from a seed."""

from shoal.sim.baton import NotInSimulation, SimulationExit
from shoal.sim.faults import PROFILES, FaultPlan, FaultProfile
from shoal.sim.harness import RunConfig, RunResult, run_simulation
from shoal.sim.program import Simulation, SimulationResult

__all__ = [
    "PROFILES",
    "FaultPlan",
    "FaultProfile",
    "NotInSimulation",
    "RunConfig",
    "RunResult",
    "Simulation",
    "SimulationExit",
    "SimulationResult",
    "run_simulation",
]
