"""Replay and data mixing: keep earlier data in every batch at an exact share.

* `ReplayBuffer` — seeded reservoir of earlier rows, per-task quotas, saved atomically (Arrow + JSON).
* `ReplayCollator` — wraps any collator; adds replay rows at share ``ratio`` of examples or tokens in every batch.
* `mix_datasets` — the same idea without a collator, on top of `datasets.interleave_datasets`.
* `CurriculumSchedule` — replay-share phases over training (moved by `CurriculumCallback`).
* `ReplayMixin` — all of the above driven by `RetentionConfig`; `generate_replay` — generative replay.

Names load on first use, so `RetentionConfig` can validate a curriculum without importing torch.

Example:
    >>> from hf_retain.replay import ReplayBuffer
    >>> ReplayBuffer(capacity=8, seed=0).capacity
    8
"""

from __future__ import annotations

from hf_retain._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CurriculumSchedule": "hf_retain.replay.curriculum",
    "REPLAY_UNITS": "hf_retain.replay.collator",
    "ReplayBuffer": "hf_retain.replay.buffer",
    "ReplayCollator": "hf_retain.replay.collator",
    "ReplayColumnError": "hf_retain.replay.buffer",
    "ReplayMixin": "hf_retain.replay.mixin",
    "generate_replay": "hf_retain.replay.generative",
    "mix_datasets": "hf_retain.replay.mixing",
    "mixing_probabilities": "hf_retain.replay.mixing",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports('hf_retain.replay', _EXPORTS, globals())
