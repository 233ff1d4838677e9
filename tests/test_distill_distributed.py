"""DistillationMixin under DDP, FSDP2 and DeepSpeed ZeRO-3, 2 CPU processes each, in two launches.

The launched script (tests/distributed/distill_trainer.py) trains a full fine-tune with the snapshot teacher on
replayed rows only (rank 0 replays every row, rank 1 none), a PEFT model whose teacher is itself with adapters
disabled, a full fine-tune with an offline (top-k cache) teacher, and LoRA on the LM head (distilled under DDP,
refused with a clear error under FSDP2 and ZeRO-3). Every engine must give the same losses as DDP,
the ranks must agree, the teacher must be sharded like the student, and the distillation loss must start at 0
(student == teacher) and then grow.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def parse(stdout: str) -> list[dict]:
    decoder, rows = json.JSONDecoder(), []
    for chunk in stdout.split("RESULT ")[1:]:  # two ranks may print onto one line
        rows.append(decoder.raw_decode(chunk)[0])
    return rows


@pytest.fixture(scope="module")
def results(run_distributed):
    rows = parse(run_distributed("distill_trainer.py", "ddp", timeout=240).stdout)
    rows += parse(run_distributed("distill_trainer.py", "zero3", timeout=300).stdout)
    return {(r["backend"], r["phase"], r["rank"]): r for r in rows}


@pytest.mark.parametrize("backend", ["ddp", "fsdp2", "zero3"])
def test_engine(results, backend):
    for phase in ("snapshot_replay", "peft_base", "offline"):
        ranks = [results[(backend, phase, rank)] for rank in (0, 1)]
        for row in ranks:
            assert row["world"] == 2 and len(row["losses"]) == 3
            assert row["distill"][0] < 1e-6 < row["distill"][-1]
            assert row["fsdp"] == (backend == "fsdp2") and row["deepspeed"] == (backend == "zero3")
        assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"])
        assert ranks[0]["distill"] == pytest.approx(ranks[1]["distill"])
        reference = results[("ddp", phase, 0)]
        assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
        assert ranks[0]["distill"] == pytest.approx(reference["distill"], rel=1e-3, abs=1e-7)

    head = [results[(backend, "peft_head", rank)] for rank in (0, 1)]
    if backend == "ddp":  # LoRA on the LM head: trained and distilled, the ranks in step
        assert head[0]["distill"][0] < 1e-6 < head[0]["distill"][-1]
        assert head[0]["losses"] == pytest.approx(head[1]["losses"])
    else:
        assert all("not yet under FSDP or DeepSpeed ZeRO-3" in row["refused"] for row in head)
    offline = results[(backend, "offline", 0)]
    assert offline["mode"] == "offline" and offline["teacher"] is None
    snapshot = results[(backend, "snapshot_replay", 0)]
    peft = results[(backend, "peft_base", 0)]
    assert snapshot["mode"] == "model" and peft["mode"] == "adapters" and peft["teacher"] is None
    if backend == "fsdp2":
        assert snapshot["student_param"] == "DTensor" and snapshot["teacher_param"] == "DTensor"
    if backend == "zero3":
        assert snapshot["teacher"] == "DeepSpeedEngine" and snapshot["teacher_partitioned"]
