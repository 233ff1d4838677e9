"""hf_retain: fine-tune Hugging Face models without forgetting what they already knew.

Every public name is importable from here; modules load on first use, so `import hf_retain` stays cheap (the CLI's
`--help` does not import torch).

Example:
    >>> from hf_retain import RetentionConfig
    >>> RetentionConfig(replay_ratio=0.3, replay_dataset="general.jsonl").methods
    ['replay[0.3 examples]']
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it. One block per area; keep each block sorted.
_EXPORTS: dict[str, str] = {
    # foundation
    "ConfigError": "hf_retain.config",
    "RetentionConfig": "hf_retain.config",
    "RetentionSFTTrainer": "hf_retain.trainer",
    "RetentionTrainer": "hf_retain.trainer",
    "build_trainer": "hf_retain.trainer",
    "builtin_corpora": "hf_retain.data.corpora",
    "evaluate_loss": "hf_retain.evaluation.loss",
    "RecipeError": "hf_retain.train",
    "load_recipe": "hf_retain.train",
    "RetentionReport": "hf_retain.evaluation.report",
    "build_tiny_model": "hf_retain.assets",
    "load_tiny_tokenizer": "hf_retain.assets",
    # lineage and optimizer consistency (issue 3)
    # optimizers (issue 4)
    # EWC (issue 5)
    # distillation (issue 6)
    # replay and mixing (issue 7)
    # evaluation, regression guard, metrics (issue 8)
    # comparisons and benchmarks (issue 9)
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_retain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
