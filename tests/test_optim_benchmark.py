"""benchmarks/optim.py --quick runs and reports Muon/AdamW ratios measured in the same run."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_reports_ratios(tmp_path):
    out = tmp_path / "optim.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "optim.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "muon/adamw: step x" in proc.stdout
    (row,) = json.loads(out.read_text())
    assert row["model"] == "tiny" and row["muon"]["step_s"] > 0 and row["adamw"]["step_s"] > 0
    # Muon keeps one momentum buffer per hidden matrix where AdamW keeps two moments: about half the state.
    assert 0.4 < row["ratio_state"] < 0.7
