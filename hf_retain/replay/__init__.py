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

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_retain.replay' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
