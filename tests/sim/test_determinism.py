"""Same seed, same trace hash; different seeds, different hashes; across processes too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shoal.sim import RunConfig, run_simulation

SEEDS = range(50)

_CHILD = """
import json, sys
from shoal.sim import RunConfig, run_simulation
hashes = {}
for profile in ("chaos", "lossy"):
    for seed in range(50):
        r = run_simulation(RunConfig(seed=seed, nodes=5, faults=profile, until_s=20))
        hashes[f"{profile}:{seed}"] = [r.trace_hash, r.violations]
print(json.dumps(hashes))
"""


@pytest.mark.parametrize("profile", ["none", "chaos"])
def test_same_seed_same_hash_different_seeds_different_hashes(profile: str) -> None:
    hashes = {}
    for seed in SEEDS:
        first = run_simulation(RunConfig(seed=seed, nodes=5, faults=profile, until_s=20))
        again = run_simulation(RunConfig(seed=seed, nodes=5, faults=profile, until_s=20))
        assert first.trace_hash == again.trace_hash, f"seed {seed}: two runs diverged"
        assert first.events == again.events, f"seed {seed}"
        assert not first.violations, f"seed {seed}: {first.violations}"
        hashes[seed] = first.trace_hash
    assert len(set(hashes.values())) == len(hashes), "two seeds produced the same trace"


def _hashes_in_child(hash_seed: str) -> dict[str, list[object]]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def test_trace_hash_does_not_depend_on_python_hash_seed() -> None:
    a = _hashes_in_child("1")
    b = _hashes_in_child("2024")
    assert len(a) == 100
    for key in a:
        assert a[key] == b[key], f"{key}: hash differs between PYTHONHASHSEED 1 and 2024"
    assert len({v[0] for v in a.values()}) == len(a), "two seeds produced the same trace"
