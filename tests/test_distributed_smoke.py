"""RetentionTrainer trains under ZeRO-3 and FSDP2 with 2 CPU processes, really sharded."""

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def results(proc):
    rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in rows) == [0, 1], proc.stdout
    return rows


def test_zero3_smoke(run_distributed):
    rows = results(run_distributed("smoke_trainer.py", "zero3", "3"))
    for row in rows:
        assert row["world"] == 2 and row["deepspeed"] and row["steps"] == 3
        assert len(row["losses"]) == 3 and all(loss == loss for loss in row["losses"])


def test_fsdp2_smoke_shards_parameters(run_distributed):
    rows = results(run_distributed("smoke_trainer.py", "fsdp2", "3"))
    for row in rows:
        assert row["world"] == 2 and row["fsdp"] and row["steps"] == 3
        # FSDP2 holds parameters as DTensor shards; unsharded replicas would be plain Parameters.
        assert row["param_type"] == "DTensor"
    assert rows[0]["losses"] == pytest.approx(rows[1]["losses"])
