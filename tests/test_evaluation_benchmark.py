"""benchmarks/evaluation.py runs end to end (--quick) and reports the guard's share of wall time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_evaluation_benchmark_quick():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "evaluation.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = proc.stdout
    result = json.loads(text[text.index("{\n"):text.index("\n}") + 2])
    assert result["evaluations_per_demo_run"] == 2  # baseline + the end check (8 steps < the 500-step cadence)
    assert 0 < result["steady_share"] < result["demo_share"] < 1
    assert "guard overhead at every_n_steps=500" in text
