"""EWC under FSDP2 (+ plain DDP) and DeepSpeed ZeRO-3 with 2 CPU processes equals the single-process EWC."""

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def results(proc) -> list[dict]:
    rows = [json.JSONDecoder().raw_decode(chunk)[0] for chunk in proc.stdout.split("RESULT ")[1:]]  # ranks interleave
    assert sorted(r["rank"] for r in rows) == [0, 1], proc.stdout
    return rows


def check_common(row: dict) -> None:
    # Fisher estimated with rows split over ranks and all-reduced == batch-of-one loop in one process.
    assert row["fisher_samples"] == 8 and row["fisher_rel_err"] < 1e-4
    assert row["partitioned_fisher_rel_err"] < 1e-4
    # One SGD step (lr 1, 2 accumulation steps x 2 ranks): task gradient + penalty gradient exactly once.
    assert row["step_rel_err"] < 1e-4
    assert row["penalty"] == pytest.approx(row["penalty_expected"], rel=1e-4)


def test_ewc_fsdp2_and_ddp(run_distributed):
    for row in results(run_distributed("ewc_check.py", "fsdp2")):
        assert row["fsdp"] and row["param_type"] == "DTensor"  # the penalty really ran on shards
        check_common(row)
        assert row["ddp_grad_rel_err"] < 1e-4
        assert row["ddp_penalty_value"] == pytest.approx(row["ddp_penalty_expected"], rel=1e-4)


def test_ewc_zero3(run_distributed):
    for row in results(run_distributed("ewc_check.py", "zero3")):
        assert row["deepspeed"] and row["created_partitioned"] and row["ds_partitioned"]
        check_common(row)
