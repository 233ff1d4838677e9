"""estimate_fisher equals brute-force batch-of-one loops; FisherState files, merging, checks and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from hf_retain import FisherError, FisherState, RetentionConfig, build_tiny_model, estimate_fisher
from hf_retain.config import ConfigError
from hf_retain.ewc.fisher import trainable_parameters

LENGTHS = [5, 17, 33, 9, 40, 2, 26, 31, 12, 1, 20]


def make_rows(seed: int = 0, lengths: list[int] = LENGTHS, labels: bool = True) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.randint(3, 259, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": ids} if labels else {"input_ids": ids})
    return rows


def brute_force(model, rows) -> dict[str, torch.Tensor]:
    """Mean of squared gradients of model(**batch_of_one).loss: the definition of the empirical Fisher."""
    params = trainable_parameters(model)
    total = {n: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for n, p in params.items()}
    model.eval()
    count = 0
    for row in rows:
        labels = torch.tensor([row["labels"]])
        if (labels[:, 1:] != -100).sum() == 0:
            continue  # no target: the batch-of-one loss is undefined
        loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, _), g in zip(params.items(), grads):
            total[name] += g.to(total[name].dtype) ** 2
        count += 1
    return {n: t / count for n, t in total.items()}


def assert_fisher_equal(state: FisherState, reference: dict[str, torch.Tensor], floor: float = 1e-6) -> None:
    """rtol 1e-4 everywhere except entries below ``floor`` x the tensor's largest entry, where float32 rounding of
    gradients that nearly cancel dominates (float64 runs use floor 0: exact to rtol 1e-4 everywhere)."""
    assert set(state.fisher) == set(reference)
    for name, ref in reference.items():
        torch.testing.assert_close(state.fisher[name], ref.to(state.fisher[name].dtype), rtol=1e-4,
                                   atol=floor * float(ref.abs().max()), msg=lambda m, n=name: f"{n}: {m}")


def test_empirical_equals_batch_of_one_loop_float64(tiny_model):
    model = tiny_model.double()
    rows = make_rows(seed=7)
    assert_fisher_equal(estimate_fisher(model, rows, batch_size=4), brute_force(model, rows), floor=0.0)


def test_empirical_equals_batch_of_one_loop(tiny_model):
    rows = make_rows()
    tiny_model.train()
    state = estimate_fisher(tiny_model, rows, batch_size=4)
    assert tiny_model.training  # mode restored
    assert tiny_model.config._attn_implementation == "sdpa"
    assert state.method == "empirical" and state.num_samples == 10  # the 1-token row has no target
    assert_fisher_equal(state, brute_force(tiny_model, rows))


def test_empirical_with_left_padding_collator_and_dataloader(tiny_model):
    rows = make_rows(seed=1, lengths=[7, 19, 3, 25, 11, 14])

    def left_pad(batch):
        width = max(len(r["input_ids"]) for r in batch)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in batch:
            pad = width - len(r["input_ids"])
            out["input_ids"].append([0] * pad + r["input_ids"])
            out["attention_mask"].append([0] * pad + [1] * len(r["input_ids"]))
            out["labels"].append([0] * pad + r["labels"])  # pad labels NOT -100: the mask must still exclude them
        return {k: torch.tensor(v) for k, v in out.items()}

    reference = brute_force(tiny_model, rows)
    assert_fisher_equal(estimate_fisher(tiny_model, rows, batch_size=4, collator=left_pad), reference)
    loader = torch.utils.data.DataLoader(rows, batch_size=3, collate_fn=left_pad)
    state = estimate_fisher(tiny_model, loader, num_samples=5)
    assert state.num_samples == 5
    assert_fisher_equal(state, brute_force(tiny_model, rows[:5]))


def test_datasets_dataset_input(tiny_model):
    from datasets import Dataset

    rows = make_rows(seed=2, lengths=[6, 12, 9])
    dataset = Dataset.from_list(rows)
    assert_fisher_equal(estimate_fisher(tiny_model, dataset, batch_size=2), brute_force(tiny_model, rows))


def test_peft_lora_only_adapters():
    peft = pytest.importorskip("peft")
    model = build_tiny_model(seed=0, num_hidden_layers=2)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(model, config)
    rows = make_rows(seed=3, lengths=[8, 15, 22, 4])
    state = estimate_fisher(model, rows, batch_size=3)
    assert state.fisher and all("lora_" in name for name in state.fisher)
    assert len(state.fisher) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert_fisher_equal(state, brute_force(model, rows))


def test_batch_method_is_squared_mean_batch_gradient(tiny_model):
    rows = make_rows(seed=4, lengths=[10, 10, 10, 10])
    state = estimate_fisher(tiny_model, rows, method="batch", batch_size=4)
    ids = torch.tensor([r["input_ids"] for r in rows])
    params = trainable_parameters(tiny_model)
    grads = torch.autograd.grad(tiny_model(input_ids=ids, labels=ids).loss, list(params.values()))
    for (name, _), g in zip(params.items(), grads):
        torch.testing.assert_close(state.fisher[name], g**2, rtol=1e-4, atol=1e-6 * float((g**2).max()))
    empirical = estimate_fisher(tiny_model, rows, batch_size=4)
    # squared batch gradients drop the per-sample variance: the batch estimate is smaller in total
    assert sum(v.sum() for v in state.fisher.values()) < sum(v.sum() for v in empirical.fisher.values())


def test_true_fisher_needs_no_labels_and_is_seeded(tiny_model):
    rows = make_rows(seed=5, lengths=[9, 14, 6], labels=False)
    torch.manual_seed(0)
    first = estimate_fisher(tiny_model, rows, method="true", batch_size=2)
    torch.manual_seed(0)
    second = estimate_fisher(tiny_model, rows, method="true", batch_size=2)
    for name in first.fisher:
        torch.testing.assert_close(first.fisher[name], second.fisher[name])
    assert first.method == "true" and first.num_samples == 3
    # The true Fisher of an untrained (near-uniform) model: expected gradient of sampled labels is zero, so it
    # differs from the empirical Fisher on the real tokens.
    empirical = estimate_fisher(tiny_model, make_rows(seed=5, lengths=[9, 14, 6]), batch_size=2)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(first.fisher[name], empirical.fisher[name], rtol=1e-2)


def test_bad_input_errors(tiny_model):
    with pytest.raises(FisherError, match="empty"):
        estimate_fisher(tiny_model, [])
    with pytest.raises(FisherError, match="needs labels"):
        estimate_fisher(tiny_model, make_rows(labels=False))
    with pytest.raises(FisherError, match="method="):
        estimate_fisher(tiny_model, make_rows(), method="diag")
    with pytest.raises(FisherError, match="batch_size"):
        estimate_fisher(tiny_model, make_rows(), batch_size=0)
    with pytest.raises(FisherError, match="has a target token"):
        estimate_fisher(tiny_model, [{"input_ids": [5], "labels": [5]}])
    with pytest.raises(ConfigError, match="ewc_lambda"):
        RetentionConfig(ewc_lambda=-1.0)
    with pytest.raises(FisherError, match="NaN"):
        FisherState({"w": torch.tensor([1.0, float("nan")])}, {"w": torch.zeros(2)}, "empirical", 1)
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    with pytest.raises(FisherError, match="no trainable parameters"):
        estimate_fisher(tiny_model, make_rows())


def test_save_load_roundtrip_and_wrong_model(tiny_model, tmp_path):
    state = estimate_fisher(tiny_model, make_rows(lengths=[8, 12]), batch_size=2)
    path = state.save(tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["hf_retain"])
    assert meta["method"] == "empirical" and meta["num_samples"] == 2
    assert meta["fingerprint"][0] == ["model.embed_tokens.weight", [259, 128], "float32"]
    loaded = FisherState.load(tmp_path)
    for name in state.fisher:
        assert torch.equal(loaded.fisher[name], state.fisher[name])
        assert torch.equal(loaded.anchor[name], state.anchor[name])
    loaded.check_compatible(tiny_model)
    wider = build_tiny_model(seed=0, num_hidden_layers=2, intermediate_size=64)
    with pytest.raises(FisherError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight'"):
        loaded.check_compatible(wider)
    deeper = build_tiny_model(seed=0, num_hidden_layers=3)
    with pytest.raises(FisherError, match=r"'model\.layers\.2\."):
        loaded.check_compatible(deeper)
    corrupt = FisherState.load(tmp_path)
    corrupt.fisher["model.norm.weight"][0] = float("inf")
    corrupt.save(tmp_path / "bad")
    with pytest.raises(FisherError, match=r"model\.norm\.weight"):
        FisherState.load(tmp_path / "bad")


def test_merge_normalize_and_storage():
    a = FisherState({"w": torch.tensor([1.0, 3.0])}, {"w": torch.zeros(2)}, "empirical", 4)
    b = FisherState({"w": torch.tensor([2.0, 0.0])}, {"w": torch.ones(2)}, "empirical", 6)
    merged = a.merge(b, decay=0.5)
    assert merged.fisher["w"].tolist() == [2.5, 1.5] and merged.anchor["w"].tolist() == [1.0, 1.0]
    assert merged.num_samples == 10
    assert merged.normalized("max").fisher["w"].tolist() == pytest.approx([1.0, 0.6])
    assert merged.normalized("mean").fisher["w"].mean().item() == pytest.approx(1.0)
    half = merged.to(dtype=torch.bfloat16)
    assert half.fisher["w"].dtype == torch.bfloat16 and half.anchor["w"].dtype == torch.float32
    assert half.nbytes() == 2 * 2 + 2 * 4
    with pytest.raises(FisherError, match="decay"):
        a.merge(b, decay=1.5)
    other = FisherState({"v": torch.ones(2)}, {"v": torch.zeros(2)}, "empirical", 1)
    with pytest.raises(FisherError, match="'w'"):
        a.merge(other, decay=0.5)
