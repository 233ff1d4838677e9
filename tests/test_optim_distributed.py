"""Muon with 2 CPU processes: FSDP2 orthogonalises full matrices; ZeRO-2/3 really run DeepSpeed's Muon."""

import json

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def results(proc):
    rows = [json.JSONDecoder().raw_decode(chunk)[0] for chunk in proc.stdout.split("RESULT ")[1:]]  # ranks interleave
    assert sorted(r["rank"] for r in rows) == [0, 1], proc.stdout[-3000:]
    return rows


def test_fsdp2_muon_orthogonalises_the_full_matrix(run_distributed):
    for row in results(run_distributed("optim_muon.py", "fsdp2", "3")):
        assert row["world"] == 2 and row["fsdp"] and row["steps"] == 3 and row["param_type"] == "DTensor"
        assert row["optimizer"] == "MuonWithAdamW" and row["hidden"] == 14
        assert row["max_rel_to_torch"] < 1e-4, row  # same update as single-process torch.optim.Muon math
        assert row["min_rel_to_adamw"] > 0.3, row  # and nothing like AdamW
        assert row["min_rel_to_shardwise"] > 0.05, row  # nor a shard orthogonalised on its own
        assert row["final_max_abs_to_torch"] < 1e-4, row  # three steps later, still the same weights
        assert row["non_hidden_max_rel_to_torch"] < 1e-4, row


@pytest.mark.parametrize("backend", ["zero2", "zero3"])
def test_deepspeed_routes_to_its_native_muon(run_distributed, backend):
    for row in results(run_distributed("optim_muon.py", backend, "1")):
        assert row["world"] == 2 and row["deepspeed"] and row["steps"] == 1
        assert row["optimizer"] != "MuonWithAdamW"  # DeepSpeed built its own optimizer
        # DeepSpeed's Muon update computed on the full gradient (bf16 Newton-Schulz turns last-bit gradient
        # differences from ZeRO's reduction into ~1-2% differences; identical gradients match exactly).
        assert row["max_rel_to_deepspeed"] < 0.05, row
        assert row["max_rel_to_torch"] < 0.2, row  # close to torch's Muon too (different NS kernel)
        assert row["exact_deepspeed_matches"] >= 1, row  # where gradients agree bitwise, the update does too
        assert row["max_update_spread"] < 2.5, row  # every hidden-matrix step is orthogonalised ...
        assert row["min_adamw_update_spread"] > 3, row  # ... which an AdamW step is not
        assert row["min_rel_to_adamw"] > 0.5, row  # and it is nowhere near an AdamW fallback
        assert row["non_hidden_max_rel_to_torch"] < 1e-4, row  # embeddings and norms did get AdamW
