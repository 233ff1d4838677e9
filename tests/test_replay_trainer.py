"""ReplayMixin inside real trainers (tiny model): SFT formatting, replay_mask, exact mid-epoch resume across a
curriculum boundary, plain Trainer tokenisation, clear errors, generative replay."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from hf_retain import RetentionConfig, build_tiny_model, load_tiny_tokenizer
from hf_retain.mixin import REPLAY_MASK_KEY, RetentionMixin
from hf_retain.replay import ReplayColumnError, ReplayMixin, generate_replay

GENERAL = [f"The {w} river flows to the sea number {i}." for i, w in enumerate(["old", "slow", "wide", "cold"] * 10)]
DOMAIN = [f"def f{i}(x):\n    return x * {i}" for i in range(16)]


class Recorder:
    """Leftmost test mixin: keeps every training batch (before RetentionMixin drops replay_mask)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.batches.append({k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


class SFTReplay(Recorder, ReplayMixin, RetentionMixin, SFTTrainer):
    batches: list


class PlainReplay(Recorder, ReplayMixin, RetentionMixin, Trainer):
    batches: list


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sft(tmp_path, retention, *, max_steps=6, save_steps=3, out="out", **kwargs):
    args = SFTConfig(output_dir=str(tmp_path / out), max_steps=max_steps, per_device_train_batch_size=4,
                     max_length=48, use_cpu=True, report_to=[], save_strategy="steps", save_steps=save_steps,
                     logging_steps=1, seed=0, learning_rate=1e-3, gradient_checkpointing=False,
                     dataloader_num_workers=0)
    trainer = SFTReplay(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args,
                        train_dataset=Dataset.from_dict({"text": DOMAIN}), processing_class=load_tiny_tokenizer(),
                        retention=retention, **kwargs)
    trainer.batches = []
    return trainer


def test_sft_replay_rows_formatted_like_training_rows_and_masked(tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    retention = RetentionConfig(replay_ratio=0.5, replay_dataset=general, distill_alpha=1.0, distill_on="replay")
    trainer = sft(tmp_path, retention, max_steps=2, save_steps=100)
    trainer.train()
    tok = load_tiny_tokenizer()
    assert len(trainer.batches) == 2
    for batch in trainer.batches:
        mask = batch[REPLAY_MASK_KEY]
        assert mask.sum() == 4 and (~mask).sum() == 4  # ratio 0.5 with 4 base rows: exactly 4 replay rows
        for ids, labels, is_replay in zip(batch["input_ids"], batch["labels"], mask):
            keep = batch["attention_mask"][0].new_ones(ids.shape).bool() & (labels != -100)
            text = tok.decode(ids[keep], skip_special_tokens=True)
            assert (text in GENERAL) == bool(is_replay)
            assert ids[keep][-1].item() == tok.eos_token_id  # SFT's own EOS step ran on replay rows as well
    assert len(trainer.replay_collator.buffer) == len(GENERAL)
    # evaluation batches stay replay-free
    assert trainer.data_collator is trainer.replay_collator.base_collator


def test_resume_mid_epoch_reproduces_batches_across_a_curriculum_boundary(tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    retention = RetentionConfig(replay_dataset=general, curriculum=[
        {"until": 0.5, "replay_ratio": 0.6}, {"until": 1.0, "replay_ratio": 0.2}])
    full = sft(tmp_path, retention, out="full")
    full.train()
    assert len(full.batches) == 6  # 16 rows / 4 = 4 batches per epoch: the checkpoint at step 3 is mid-epoch
    sizes = [b["input_ids"].shape[0] for b in full.batches]
    # 4 base rows + 6 replay rows (0.6) before the boundary at step 3, + 1 (0.2) after; batch 3 was prefetched at 0.6
    assert sizes == [10, 10, 10, 10, 5, 5]
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "replay_buffer" / "replay_buffer.json").is_file()
    assert (checkpoint / "replay_collator_rank0.json").is_file()
    resumed = sft(tmp_path, retention, out="resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert len(resumed.batches) == 3
    for a, b in zip(full.batches[3:], resumed.batches):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_plain_trainer_tokenises_replay_text(tmp_path, tiny_tokenizer):
    general = write_jsonl(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    train = Dataset.from_dict({"input_ids": [tiny_tokenizer(t)["input_ids"] for t in DOMAIN]})
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=2, per_device_train_batch_size=4,
                             use_cpu=True, report_to=[], save_strategy="no", seed=0)
    trainer = PlainReplay(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args, train_dataset=train,
                          data_collator=DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False),
                          retention=RetentionConfig(replay_ratio=0.5, replay_dataset=general))
    trainer.batches = []
    trainer.train()
    decoded = tiny_tokenizer.batch_decode(trainer.batches[0]["input_ids"], skip_special_tokens=True)
    longest = max(len(ids) for ids in train["input_ids"])
    replayed = [t for t in decoded if t not in DOMAIN]
    # replay text is tokenised with the collator's tokenizer and truncated to the longest training row
    assert len(replayed) == 4 and sum(t in DOMAIN for t in decoded) == 4
    assert all(any(g.startswith(t) for g in GENERAL) for t in replayed)
    assert all(len(r["input_ids"]) <= longest for r in trainer.replay_collator.buffer.rows())


def test_replay_data_in_another_format_is_a_clear_error(tmp_path, tiny_tokenizer):
    other = write_jsonl(tmp_path / "other.jsonl", [{"content": t} for t in GENERAL])
    train = Dataset.from_dict({"input_ids": [tiny_tokenizer(t)["input_ids"] for t in DOMAIN]})
    args = TrainingArguments(output_dir=str(tmp_path / "bad"), max_steps=1, per_device_train_batch_size=4,
                             use_cpu=True, report_to=[], save_strategy="no")
    trainer = PlainReplay(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args, train_dataset=train,
                          data_collator=DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False),
                          retention=RetentionConfig(replay_ratio=0.3, replay_dataset=other))
    with pytest.raises(ReplayColumnError, match="'input_ids' is missing"):
        trainer.train()
    with pytest.raises(ValueError, match="replay_dataset"):
        PlainReplay(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args, train_dataset=train,
                    retention=RetentionConfig(replay_ratio=0.3))


def test_replay_off_is_a_no_op(tmp_path):
    trainer = sft(tmp_path, RetentionConfig(), max_steps=1, save_steps=100)
    trainer.train()
    assert trainer.replay_collator is None and trainer.batches[0]["input_ids"].shape[0] == 4
    assert REPLAY_MASK_KEY not in trainer.batches[0]


def test_generative_replay(tmp_path):
    model, tok = build_tiny_model(seed=0, num_hidden_layers=2), load_tiny_tokenizer()
    prompts = ["The river", "An old", "Once upon"]
    a = generate_replay(model, tok, prompts, max_new_tokens=6, min_new_tokens=6, seed=1)
    b = generate_replay(model, tok, prompts, max_new_tokens=6, min_new_tokens=6, seed=1)
    c = generate_replay(model, tok, prompts, max_new_tokens=6, min_new_tokens=6, seed=2)
    assert a.rows() == b.rows() != c.rows()
    assert sorted(r["prompt"] for r in a.rows()) == sorted(prompts)
    assert all(len(r["completion"]) > 0 for r in a.rows())
    # the same through the trainer: replay_dataset rows are prompts, the buffer holds the model's own text
    general = write_jsonl(tmp_path / "prompts.jsonl", [{"text": p} for p in prompts])
    trainer = sft(tmp_path, RetentionConfig(replay_ratio=0.5, replay_dataset=general, replay_generate_tokens=5),
                  max_steps=1, save_steps=100)
    trainer.train()
    replayed = tok.batch_decode([r["input_ids"] for r in trainer.replay_collator.buffer.rows()],
                                skip_special_tokens=True)
    assert len(replayed) == 3 and all(any(t.startswith(p) and len(t) > len(p) for p in prompts) for t in replayed)


def test_ready_buffer_instead_of_a_dataset(tmp_path):
    from hf_retain.replay import ReplayBuffer

    tok = load_tiny_tokenizer()
    ids = [tok(t)["input_ids"][:20] for t in GENERAL]
    buffer = ReplayBuffer.from_dataset([{"input_ids": i, "labels": i} for i in ids], seed=0)
    trainer = sft(tmp_path, RetentionConfig(replay_ratio=0.5), max_steps=1, save_steps=100, replay_buffer=buffer)
    trainer.train()
    assert trainer.replay_collator.buffer is buffer and trainer.batches[0]["input_ids"].shape[0] == 8
    wrong = ReplayBuffer.from_dataset([{"input_ids": [5, 9999], "labels": [5, 9999]}], seed=0)
    trainer = sft(tmp_path, RetentionConfig(replay_ratio=0.5), max_steps=1, save_steps=100, replay_buffer=wrong)
    with pytest.raises(ReplayColumnError, match="vocabulary"):
        trainer.train()
