"""Optimizer consistency and lineage under DeepSpeed ZeRO-2 with 2 CPU processes (one launch)."""

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_lineage_and_consistency_under_zero2(run_distributed):
    proc = run_distributed("lineage_check.py", "zero2", timeout=240)
    rows = [json.JSONDecoder().raw_decode(chunk)[0] for chunk in proc.stdout.split("RESULT ")[1:]]  # ranks interleave
    assert sorted(r["rank"] for r in rows) == [0, 1], proc.stdout
    for row in rows:
        assert row["deepspeed"]
        # the optimizer was read through DeepSpeed's wrappers, not guessed from TrainingArguments
        assert row["status"] == "mismatch" and row["finetune"] == "adamw"
        assert row["finetune_source"].startswith("optimizer instance"), row["finetune_source"]
        assert row["warned"] and row["log_entry"]
        assert row["read_back"] == "adamw" and row["read_back_lr"] == pytest.approx(3e-4)
        assert row["read_back_betas"] == pytest.approx([0.9, 0.95])
