"""Replay under DDP with 2 CPU processes: per-rank draws, exact counts, exact per-rank resume."""

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_replay_ddp_ranks_draw_differently_and_resume_exactly(run_distributed):
    proc = run_distributed("replay_ddp.py", "ddp", timeout=240)
    rows = [json.JSONDecoder().raw_decode(chunk)[0] for chunk in proc.stdout.split("RESULT ")[1:]]  # ranks interleave
    assert sorted(r["rank"] for r in rows) == [0, 1], proc.stdout
    for row in rows:
        assert row["world"] == 2 and row["collator_rank"] == row["rank"]
        assert row["replay_counts"] == [4] * 6 and row["base_counts"] == [4] * 6
        assert row["replay_rows_are_general"]
        assert row["resume_equal"]
    assert rows[0]["replayed"] != rows[1]["replayed"]
