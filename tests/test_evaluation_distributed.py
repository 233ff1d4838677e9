"""RegressionEarlyStoppingCallback with 2 CPU processes: one decision for all ranks, rollback from shards."""

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def results(proc):
    rows = [json.JSONDecoder().raw_decode(chunk)[0] for chunk in proc.stdout.split("RESULT ")[1:]]  # ranks interleave
    assert sorted(r["rank"] for r in rows) == [0, 1], proc.stdout
    return rows


def test_ranks_that_would_decide_differently_stop_together_without_hanging(run_distributed):
    # A hang (rank 1 stopping alone while rank 0 waits in the gradient all-reduce) fails as a timeout.
    rows = results(run_distributed("regression_guard.py", "ddp", "decide", timeout=150))
    for row in rows:
        assert row["stopped_at"] == 6 and row["steps"] == 6  # rank 0's patience of 3 evaluations, on both ranks
        assert [h["scores"]["scripted"] for h in row["history"]] == [0.5, 0.5, 0.5]  # rank 0's scores everywhere
        assert [h["act"] for h in row["history"]] == ["none", "none", "rollback"]
        assert row["restored_step"] == 0 and row["max_diff_from_initial"] == 0.0  # rank 0's copy, broadcast
    assert rows[0]["history"] == rows[1]["history"]


@pytest.mark.parametrize("store", ["memory", "disk"])
@pytest.mark.parametrize("backend", ["fsdp2", "zero3"])
def test_rollback_restores_sharded_weights_on_every_rank(run_distributed, backend, store):
    scenario = "rollback" if store == "memory" else "rollback-disk"
    rows = results(run_distributed("regression_guard.py", backend, scenario, timeout=180))
    if store == "disk":  # the target went to output_dir (written by rank 0), never into memory
        assert not any(row["held_in_memory"] for row in rows) and rows[0]["target_on_disk"]
    for row in rows:
        if backend == "fsdp2":
            assert row["fsdp"] and row["param_type"] == "DTensor"
        else:
            assert row["deepspeed"]
        assert row["stopped_at"] is not None and row["steps"] == row["stopped_at"] < 24
        assert row["restored_step"] == row["best_step"] < row["stopped_at"]
        assert (row["final_general"] - row["baseline"]) / row["baseline"] <= 0.02
        scores = {h["step"]: h["scores"]["general"] for h in row["history"]}
        assert row["final_general"] == pytest.approx(scores.get(row["best_step"], row["baseline"]), rel=1e-5)
    assert rows[0]["final_general"] == pytest.approx(rows[1]["final_general"], rel=1e-6)
    assert rows[0]["history"] == rows[1]["history"]
