"""DistillationMixin: the loss matches a full-logits reference on the task-loss positions, for every divergence and
teacher kind; replay rows, gradient accumulation, logging, resume and bad input behave as documented."""

from __future__ import annotations

import json
import os

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import RetentionConfig, build_tiny_model
from hf_retain.distill import (
    DistillationMixin,
    DistillCacheError,
    OfflineTeacherCache,
    TeacherError,
    build_distill_cache,
)
from hf_retain.distill import teachers as teachers_module
from hf_retain.mixin import REPLAY_MASK_KEY


class DistilTrainer(DistillationMixin, Trainer):
    pass


def make_trainer(model, tmp_path, retention, **arg_overrides):
    ids = torch.randint(3, 259, (16, 12), generator=torch.Generator().manual_seed(0)).tolist()
    settings = dict(max_steps=2, per_device_train_batch_size=4, report_to=[], logging_steps=1, save_strategy="no",
                    use_cpu=True, disable_tqdm=True, seed=0)
    settings.update(arg_overrides)
    args = TrainingArguments(str(tmp_path / "out"), **settings)
    return DistilTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                         retention=retention)


def hand_batch():
    """3 rows: row 0 completion-only (prompt labels -100), row 1 full, row 2 right-padded."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 259, (3, 10), generator=g)
    attention = torch.ones(3, 10, dtype=torch.long)
    attention[2, 7:] = 0
    input_ids[2, 7:] = 0
    labels = input_ids.clone()
    labels[0, :4] = -100
    labels[2, 7:] = -100
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def reference_sum(student_logits, teacher_logits, mask, divergence, beta=0.5, temperature=1.0):
    """Sum over masked positions of the divergence, from full logits (independent of TRL)."""
    ls = torch.log_softmax(student_logits[:, :-1].float() / temperature, -1)
    lt = torch.log_softmax(teacher_logits[:, :-1].float() / temperature, -1)
    ps, pt = ls.exp(), lt.exp()
    if divergence == "forward_kl":
        per = (pt * (lt - ls)).sum(-1)
    elif divergence == "reverse_kl":
        per = (ps * (ls - lt)).sum(-1)
    else:
        lm = torch.logsumexp(torch.stack([ls + torch.log1p(torch.tensor(-beta)), lt + torch.log(torch.tensor(beta))]),
                             0)
        per = beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)
    return per[mask].sum()


def perturb(model, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def task_loss(trainer, batch, **kw):
    return Trainer.compute_loss(trainer, trainer.model, {k: v for k, v in batch.items() if k != REPLAY_MASK_KEY},
                                **kw)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_snapshot_teacher_matches_reference(tiny_model, tmp_path, divergence):
    cfg = RetentionConfig(distill_alpha=0.7, distill_divergence=divergence, distill_beta=0.3, distill_temperature=2.0)
    trainer = make_trainer(tiny_model, tmp_path, cfg)
    trainer._distill_begin(None)
    teacher = trainer._distill_teacher
    assert teacher is not tiny_model and not any(p.requires_grad for p in teacher.parameters())
    perturb(tiny_model)
    tiny_model.train()
    batch = hand_batch()
    total = trainer.compute_loss(tiny_model, dict(batch))
    base = task_loss(trainer, batch)
    mask = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        ref = reference_sum(tiny_model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                            teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                            mask, divergence, beta=0.3, temperature=2.0)
    expected = 0.7 * ref / mask.sum()
    assert ref > 1e-4
    torch.testing.assert_close(total - base, expected, rtol=1e-4, atol=1e-6)
    # Gradient flows into the student through the distillation term.
    total.backward()
    assert tiny_model.get_output_embeddings().weight.grad is not None


def test_gradient_accumulation_uses_num_items_in_batch(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, tmp_path, RetentionConfig(distill_alpha=1.0))
    trainer._distill_begin(None)
    perturb(tiny_model)
    batch = hand_batch()
    n_items = torch.tensor(40)  # tokens of the whole accumulated batch, more than this micro-batch holds
    total = trainer.compute_loss(tiny_model, dict(batch), num_items_in_batch=n_items)
    base = task_loss(trainer, batch, num_items_in_batch=n_items)
    mask = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        ref = reference_sum(tiny_model(**inputs).logits, trainer._distill_teacher(**inputs).logits, mask, "forward_kl")
    torch.testing.assert_close(total - base, ref / 40, rtol=1e-4, atol=1e-6)


def test_replay_rows_only(tiny_model, tmp_path):
    cfg = RetentionConfig(distill_alpha=1.0, distill_on="replay", replay_ratio=0.5, replay_dataset="unused.jsonl")
    trainer = make_trainer(tiny_model, tmp_path, cfg)
    trainer._distill_begin(None)
    perturb(tiny_model)
    batch = hand_batch()
    replay = torch.tensor([True, False, True])
    inputs = dict(batch, **{REPLAY_MASK_KEY: replay})
    total = trainer.compute_loss(tiny_model, inputs)
    assert REPLAY_MASK_KEY not in inputs  # popped before the model's forward
    base = task_loss(trainer, batch)
    mask = (batch["labels"][:, 1:] != -100) & replay.view(-1, 1)
    with torch.no_grad():
        x = {k: batch[k] for k in ("input_ids", "attention_mask")}
        ref = reference_sum(tiny_model(**x).logits, trainer._distill_teacher(**x).logits, mask, "forward_kl")
    task_tokens = (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(total - base, ref / task_tokens, rtol=1e-4, atol=1e-6)

    # No replayed row in the batch: exactly the task loss, and no teacher forward.
    calls = []
    trainer._distill_teacher.register_forward_hook(lambda *a: calls.append(1))
    none = trainer.compute_loss(tiny_model, dict(batch, **{REPLAY_MASK_KEY: torch.zeros(3, dtype=torch.bool)}))
    torch.testing.assert_close(none, base)
    assert calls == []

    with pytest.raises(ValueError, match="replay_mask"):
        trainer.compute_loss(tiny_model, dict(batch))


def test_peft_base_teacher_is_the_same_model_with_adapters_off(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    trainer = make_trainer(model, tmp_path, RetentionConfig(distill_alpha=1.0, distill_divergence="jsd"))
    trainer._distill_begin(None)
    assert trainer._distill_mode == "adapters" and trainer._distill_teacher is None  # no second copy
    batch = hand_batch()
    model.train()
    # LoRA B starts at zero: the student equals its teacher, so the term is ~0.
    zero = trainer.compute_loss(model, dict(batch)) - task_loss(trainer, batch)
    assert abs(float(zero)) < 1e-6
    perturb(model, scale=0.2)  # only LoRA weights are trainable
    total = trainer.compute_loss(model, dict(batch))
    base = task_loss(trainer, batch)
    mask = batch["labels"][:, 1:] != -100
    x = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        student_logits = model(**x).logits
        with model.disable_adapter():
            teacher_logits = model(**x).logits
    ref = reference_sum(student_logits, teacher_logits, mask, "jsd")
    assert ref > 1e-5
    torch.testing.assert_close(total - base, ref / mask.sum(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("top_k", [259, 8])
def test_offline_teacher(tiny_model, tiny_tokenizer, tmp_path, top_k):
    batch = hand_batch()
    rows = [batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist() for r in range(3)]
    teacher = build_tiny_model(seed=0, num_hidden_layers=2)
    folder = build_distill_cache(teacher, rows, tmp_path / "cache", tokenizer=tiny_tokenizer, top_k=top_k,
                                 batch_size=2)
    cfg = RetentionConfig(distill_alpha=1.0, distill_teacher="offline", distill_teacher_path=folder)
    trainer = make_trainer(tiny_model, tmp_path, cfg)
    trainer.processing_class = tiny_tokenizer
    trainer.train_dataset = Dataset.from_dict({"input_ids": rows})
    trainer._distill_begin(None)
    perturb(tiny_model)
    total = trainer.compute_loss(tiny_model, dict(batch))
    base = task_loss(trainer, batch)
    mask = batch["labels"][:, 1:] != -100
    x = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = reference_sum(tiny_model(**x).logits, teacher(**x).logits, mask, "forward_kl")
    if top_k == 259:  # the whole vocabulary: the buckets are the full distribution, exactly
        torch.testing.assert_close(total - base, ref / mask.sum(), rtol=1e-4, atol=1e-6)
    else:  # top-8 + tail is a coarsening of the full distribution: a smaller, still positive divergence
        assert 0 < float(total - base) <= float(ref / mask.sum()) + 1e-6


def test_offline_cache_fingerprints(tiny_model, tiny_tokenizer, tmp_path):
    rows = [[5, 6, 7, 8], [9, 10, 11]]
    folder = build_distill_cache(build_tiny_model(num_hidden_layers=1), rows, tmp_path / "c", tokenizer=tiny_tokenizer,
                                 top_k=4, temperature=2.0)
    cache = OfflineTeacherCache(folder)
    ids, logprobs, tail = cache.row(rows[0])
    assert ids.shape == (3, 4)
    torch.testing.assert_close(logprobs.exp().sum(-1) + tail.exp(), torch.ones(3))
    cache.check_compatible(tokenizer=tiny_tokenizer, temperature=2.0, rows=list(reversed(rows)))  # order-free
    with pytest.raises(DistillCacheError, match="another dataset"):
        cache.check_compatible(rows=[[5, 6, 7, 8]])
    with pytest.raises(DistillCacheError, match="temperature"):
        cache.check_compatible(temperature=1.0)
    other = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    other.add_tokens(["<extra>"])
    with pytest.raises(DistillCacheError, match="another tokenizer"):
        cache.check_compatible(tokenizer=other)
    with pytest.raises(DistillCacheError, match="not in the offline cache"):
        cache.row([1, 2, 3])
    with pytest.raises(DistillCacheError, match="distill-cache"):
        OfflineTeacherCache(tmp_path)
    # Training on other data than the cache holds fails at train begin, naming the fingerprint.
    cfg = RetentionConfig(distill_alpha=1.0, distill_teacher="offline", distill_teacher_path=folder,
                          distill_temperature=2.0)
    with pytest.raises(DistillCacheError, match="another dataset"):
        make_trainer(tiny_model, tmp_path, cfg).train()


def test_path_teacher_vocab_mismatch_and_match(tiny_model, tmp_path):
    other = build_tiny_model(num_hidden_layers=1, vocab_size=300)
    other.save_pretrained(tmp_path / "other")
    cfg = RetentionConfig(distill_alpha=1.0, distill_teacher="path", distill_teacher_path=str(tmp_path / "other"))
    with pytest.raises(TeacherError, match="vocabulary"):
        make_trainer(tiny_model, tmp_path, cfg).train()
    # A smaller teacher with the same vocabulary works (hidden sizes may differ).
    small = build_tiny_model(num_hidden_layers=1, hidden_size=64, intermediate_size=128)
    small.save_pretrained(tmp_path / "small")
    cfg = RetentionConfig(distill_alpha=1.0, distill_teacher="path", distill_teacher_path=str(tmp_path / "small"))
    trainer = make_trainer(tiny_model, tmp_path, cfg)
    trainer.train()
    logged = [r["distill_loss"] for r in trainer.state.log_history if "distill_loss" in r]
    assert len(logged) == 2 and all(v > 1e-3 for v in logged)  # a different model: a real divergence


def test_snapshot_without_room_states_memory_needed(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(teachers_module, "available_bytes", lambda device: 1024)
    with pytest.raises(TeacherError, match=r"takes \d+\.\d+ GiB on cpu, and only 0\.00 GiB is free"):
        make_trainer(tiny_model, tmp_path, RetentionConfig(distill_alpha=1.0)).train()


def test_snapshot_dtype_and_noop(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, tmp_path, RetentionConfig(distill_alpha=1.0, distill_teacher_dtype="bfloat16"))
    trainer._distill_begin(None)
    assert next(trainer._distill_teacher.parameters()).dtype == torch.bfloat16
    # Tied weights stay tied in the snapshot (one matrix, not two).
    t = trainer._distill_teacher
    assert t.get_output_embeddings().weight is t.get_input_embeddings().weight

    off = make_trainer(build_tiny_model(num_hidden_layers=2), tmp_path, RetentionConfig())
    off.train()
    assert off._distill_mode is None
    assert not any("distill_loss" in r for r in off.state.log_history)


def test_logs_distill_loss_zero_at_step_zero_and_resume_keeps_original_teacher(tmp_path):
    original = build_tiny_model(seed=0, num_hidden_layers=2)
    reference = {k: v.clone() for k, v in original.state_dict().items()}
    cfg = RetentionConfig(distill_alpha=1.0)
    trainer = make_trainer(original, tmp_path, cfg, max_steps=4, save_strategy="steps", save_steps=2,
                           learning_rate=5e-3)
    trainer.train()
    logged = [r["distill_loss"] for r in trainer.state.log_history if "distill_loss" in r]
    assert len(logged) == 4 and logged[0] < 1e-6 < logged[-1]
    out = tmp_path / "out"
    state = json.loads((out / "checkpoint-2" / "distill_teacher.json").read_text())
    assert os.path.normpath(out / "checkpoint-2" / state["snapshot"]) == str(
        out / "distill_teacher_snapshot" / "model.safetensors")

    # Resume with a model whose weights are neither the original nor the checkpoint's: the teacher must still be
    # the original model from when training first began.
    stranger = build_tiny_model(seed=7, num_hidden_layers=2)
    resumed = make_trainer(stranger, tmp_path, cfg, max_steps=4, save_strategy="steps", save_steps=2,
                           learning_rate=5e-3)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    teacher_state = resumed._distill_teacher.state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(teacher_state[key], value)
    os.remove(out / "distill_teacher_snapshot" / "model.safetensors")
    again = make_trainer(build_tiny_model(seed=7, num_hidden_layers=2), tmp_path, cfg, max_steps=4,
                         save_strategy="steps", save_steps=2)
    with pytest.raises(TeacherError, match="teacher snapshot taken when training first began"):
        again.train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_sft_completion_only_with_fused_head(tiny_tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    class DistilSFT(DistillationMixin, SFTTrainer):
        pass

    data = Dataset.from_dict({"prompt": ["def add(a, b):", "Say hi:"] * 4,
                              "completion": ["\n    return a + b", " hi there"] * 4})
    args = SFTConfig(str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=4, report_to=[],
                     logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=5e-3,
                     completion_only_loss=True, max_length=64)
    trainer = DistilSFT(model=build_tiny_model(num_hidden_layers=2), args=args, train_dataset=data,
                        processing_class=tiny_tokenizer, retention=RetentionConfig(distill_alpha=1.0))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any()  # prompts are masked
    trainer.train()
    logged = [r["distill_loss"] for r in trainer.state.log_history if "distill_loss" in r]
    assert len(logged) == 3 and logged[0] < 1e-6 < logged[-1]


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.4])
def test_chunked_divergence_over_several_tiles_matches_full_logits(beta):
    """More tokens than one CPU tile holds, and a vocabulary narrower than TRL's 32k tiles: same value and gradient
    as the full-logits divergence."""
    from hf_retain.distill.divergence import _TORCH_TILE_ELEMENTS, chunked_divergence_sum

    vocab, hidden, tokens = 259, 16, _TORCH_TILE_ELEMENTS // 259 + 300
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(1, tokens, hidden, generator=g, requires_grad=True)
    h_t = torch.randn(1, tokens, hidden, generator=g)
    w_s = (torch.randn(vocab, hidden, generator=g) * 0.3).requires_grad_(True)
    w_t = torch.randn(vocab, hidden, generator=g) * 0.3
    mask = torch.rand(1, tokens, generator=g) > 0.2
    got = chunked_divergence_sum(h_s, h_t, w_s, w_t, mask, beta, temperature=1.5)
    grads = torch.autograd.grad(got, (h_s, w_s))

    ls = torch.log_softmax((h_s @ w_s.t()) / 1.5, -1)
    lt = torch.log_softmax((h_t @ w_t.t()) / 1.5, -1)
    if beta == 0.0:
        per = (lt.exp() * (lt - ls)).sum(-1)
    elif beta == 1.0:
        per = (ls.exp() * (ls - lt)).sum(-1)
    else:
        lm = torch.logaddexp(ls + torch.log(torch.tensor(1 - beta)), lt + torch.log(torch.tensor(beta)))
        per = beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    want = per[mask].sum()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, torch.autograd.grad(want, (h_s, w_s))):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("head", ["frozen", "trainable_with_bias"])
def test_one_pass_divergence_equals_trls_two_pass_function(beta, head):
    """Off Triton the divergence runs in one pass; it gives TRL's ChunkedDivergenceFunction's value and gradients
    (hidden states, head weight, head bias), with logit scaling and soft-capping on both sides."""
    from hf_retain.distill.divergence import _chunked_divergence_function, _OnePassDivergenceSum

    vocab, hidden, tokens = 300, 24, 700  # several one-pass tiles; TRL's path folds the vocabulary too
    g = torch.Generator().manual_seed(3)
    h_s = torch.randn(tokens, hidden, generator=g, requires_grad=True)
    h_t = torch.randn(tokens, hidden, generator=g)
    w_s = torch.randn(vocab, hidden, generator=g) * 0.3
    w_t = torch.randn(vocab, hidden, generator=g) * 0.3
    b_s = b_t = None
    if head == "trainable_with_bias":
        w_s.requires_grad_(True)
        b_s = (torch.randn(vocab, generator=g) * 0.1).requires_grad_(True)
        b_t = torch.randn(vocab, generator=g) * 0.1
    args = (h_s, w_s, b_s, h_t, w_t, b_t, beta, 1.3, 0.9, 20.0, 1.1, None)
    inputs = [t for t in (h_s, w_s, b_s) if t is not None and t.requires_grad]
    one = _OnePassDivergenceSum.apply(*args)
    per_token, _ = _chunked_divergence_function().apply(*args)
    two = per_token.sum()
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(one * 2.5, inputs), torch.autograd.grad(two * 2.5, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("head_adapter", ["lora", "modules_to_save"])
def test_peft_adapter_on_the_lm_head(tmp_path, head_adapter):
    """An adapter that trains the LM head: the student projects through its adapted head, the teacher through the
    original one; loss and the head adapter's gradients match the full-logits reference."""
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(num_hidden_layers=1, tie_word_embeddings=False)
    if head_adapter == "lora":
        config = LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0, lora_alpha=8)
    else:
        config = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], lora_dropout=0.0)
    model = get_peft_model(base, config)
    trainer = make_trainer(model, tmp_path, RetentionConfig(distill_alpha=1.0, distill_divergence="reverse_kl"))
    trainer._distill_begin(None)
    perturb(model, scale=0.2)
    head_params = [p for n, p in model.named_parameters() if "lm_head" in n and p.requires_grad]
    assert head_params
    batch = hand_batch()
    model.train()
    got = trainer.compute_loss(model, dict(batch)) - task_loss(trainer, batch)
    got_grads = torch.autograd.grad(got, head_params)

    x = {k: batch[k] for k in ("input_ids", "attention_mask")}
    mask = batch["labels"][:, 1:] != -100
    with torch.no_grad(), model.disable_adapter():
        teacher_logits = model(**x).logits
    want = reference_sum(model(**x).logits, teacher_logits, mask, "reverse_kl") / mask.sum()
    assert want > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for a, b in zip(got_grads, torch.autograd.grad(want, head_params)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)


def test_unsupported_head_adapter_and_sharded_adapted_head_are_refused(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(build_tiny_model(num_hidden_layers=1, tie_word_embeddings=False),
                          LoraConfig(r=4, target_modules=["lm_head"], use_dora=True))
    with pytest.raises(TeacherError, match="DoRA"):
        make_trainer(dora, tmp_path, RetentionConfig(distill_alpha=1.0))._distill_begin(None)

    lora = get_peft_model(build_tiny_model(num_hidden_layers=1, tie_word_embeddings=False),
                          LoraConfig(r=4, target_modules=["lm_head"]))
    trainer = make_trainer(lora, tmp_path, RetentionConfig(distill_alpha=1.0))
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True, raising=False)
    with pytest.raises(TeacherError, match="not yet under FSDP"):
        trainer._distill_begin(None)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_offline_divergence_gradients_match_plain_autograd(beta):
    """The offline divergence computes its gradients in the forward, tile by tile: they equal plain autograd's."""
    from trl.experimental.gkd import GKDTrainer

    from hf_retain.distill.divergence import LOG_FLOOR, _bucket_logprobs, offline_divergence_sum

    vocab, hidden, tokens, k = 300, 16, 700, 5  # several tiles
    g = torch.Generator().manual_seed(4)
    h = torch.randn(tokens, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.3).requires_grad_(True)
    b = (torch.randn(vocab, generator=g) * 0.1).requires_grad_(True)
    t_logp = torch.log_softmax(torch.randn(tokens, vocab, generator=g), -1)
    top, ids = t_logp.topk(k, dim=-1)
    tail = torch.logsumexp(t_logp.scatter(-1, ids, float("-inf")), -1)
    got = offline_divergence_sum(h, w, b, ids, top, tail, beta=beta, temperature=1.2, scale=0.9)
    student = _bucket_logprobs(h, w, b, ids, 0.9, None, 1.2).clamp(min=LOG_FLOOR)
    want = GKDTrainer.generalized_jsd_loss(student, torch.cat([top, tail[:, None]], -1), beta=beta,
                                           temperature=1.0, num_items_in_batch=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, c in zip(torch.autograd.grad(got * 3, (h, w, b)), torch.autograd.grad(want * 3, (h, w, b))):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_teacher_mode_switches_and_restores_exactly(tiny_model):
    """TeacherMode flips eval mode and PEFT adapters for one forward and restores every module's own state; its
    hidden states equal those of PEFT's disable_adapter() with eval()."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from hf_retain.distill.teachers import TeacherMode, teacher_hidden_states

    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    perturb(model, scale=0.2)
    model.train()
    frozen_norm = model.get_base_model().model.norm.eval()  # a module the user keeps in eval mode
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    mode = TeacherMode(model, disable_adapters=True)
    assert mode.fast and layers
    with mode():
        assert not any(m.training for m in model.modules())
        assert all(layer.disable_adapters for layer in layers)
    assert model.training and not frozen_norm.training and not any(layer.disable_adapters for layer in layers)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # untouched

    x = {"input_ids": hand_batch()["input_ids"]}
    fast = teacher_hidden_states(model, x, mode=mode)
    mode.fast = False  # PEFT's disable_adapter() and eval()/train()
    slow = teacher_hidden_states(model, x, mode=mode)
    with torch.no_grad(), model.disable_adapter():
        model.eval()
        plain = model(**x, output_hidden_states=True).hidden_states[-1]
        model.train()
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)
    assert model.training and not any(layer.disable_adapters for layer in layers)


def test_cache_build_projects_in_token_tiles_and_matches_full_logits(tmp_path):
    """The cache builder never forms [batch, length, vocab] logits: with a 20k vocabulary a 300-token row spans two
    token tiles, and the cached top-k and tail equal those of the model's full logits."""
    class Vocab:
        def get_vocab(self):
            return {f"<{i}>": i for i in range(20000)}

    model = build_tiny_model(num_hidden_layers=1, vocab_size=20000)
    row = torch.randint(3, 20000, (300,), generator=torch.Generator().manual_seed(5)).tolist()
    cache = OfflineTeacherCache(build_distill_cache(model, [row], tmp_path / "c", tokenizer=Vocab(), top_k=6,
                                                    temperature=1.5))
    ids, logprobs, tail = cache.row(row)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0, :-1].float() / 1.5, -1)
    want_lp, want_ids = lp.topk(6, dim=-1)
    assert torch.equal(ids.long(), want_ids)
    torch.testing.assert_close(logprobs, want_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tail, torch.logsumexp(lp.scatter(-1, want_ids, float("-inf")), -1), rtol=1e-5,
                               atol=1e-5)
