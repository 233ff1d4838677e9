"""EWC measurably reduces forgetting on a two-task toy at similar new-task loss; the benchmark smoke-runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "ewc.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("hf_retain_ewc_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ewc_reduces_forgetting_on_two_task_toy(bench):
    result = bench.two_task_retention([0.0, 1e4], pretrain_steps=60, finetune_steps=30, batch=16, length=24)
    plain, ewc = result["runs"][0.0], result["runs"][1e4]
    assert plain["forgetting"] > 0.5, result  # the toy really forgets without protection
    assert ewc["forgetting"] < 0.5 * plain["forgetting"], result
    assert ewc["b_loss"] < plain["b_loss"] + 0.25, result  # ... while learning task B about as well


def test_benchmark_quick_smoke(bench, capsys):
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "penalty step-time ratio" in out and "Fisher speedup" in out and "retention lambda=0.0" in out
