"""Integration with the real replay path: ReplayMixin's collator marks replayed rows and DistillationMixin distils
exactly those (distill_on='replay', the recommended setup), through TRL's SFTTrainer."""

from __future__ import annotations

import json

import torch
from datasets import Dataset

from hf_retain import RetentionConfig, build_tiny_model
from hf_retain.distill import DistillationMixin
from hf_retain.mixin import REPLAY_MASK_KEY


def test_distill_on_replayed_rows_with_replay_collator(tmp_path, tiny_tokenizer):
    from trl import SFTConfig, SFTTrainer

    from hf_retain.replay import ReplayMixin

    class Trainer(DistillationMixin, ReplayMixin, SFTTrainer):
        pass

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"text": f"General prose, sentence {i}."}) + "\n" for i in range(40)))
    data = Dataset.from_dict({"text": [f"def f{i}(x):\n    return x * {i}" for i in range(32)]})
    args = SFTConfig(str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, report_to=[],
                     logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=5e-3)
    trainer = Trainer(model=build_tiny_model(num_hidden_layers=2), args=args, train_dataset=data,
                      processing_class=tiny_tokenizer,
                      retention=RetentionConfig(distill_alpha=1.0, distill_on="replay", replay_ratio=0.5,
                                                replay_dataset=str(general)))
    seen: list[tuple[int, int]] = []
    original = trainer._teacher_side

    def spy(student, inputs, rows, batch, pre_shifted):
        assert REPLAY_MASK_KEY in inputs
        assert torch.equal(rows, inputs[REPLAY_MASK_KEY].nonzero().flatten())  # teacher runs on replayed rows only
        seen.append((int(rows.numel()), batch))
        return original(student, inputs, rows, batch, pre_shifted)

    trainer._teacher_side = spy
    trainer.train()
    logged = [r["distill_loss"] for r in trainer.state.log_history if "distill_loss" in r]
    assert len(seen) == 3 and all(0 < n < batch for n, batch in seen)  # a mix of replayed and new rows
    assert len(logged) == 3 and logged[0] < 1e-5 < logged[-1]
