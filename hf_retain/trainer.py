"""The ready compositions `RetentionTrainer` and `RetentionSFTTrainer`, and `build_trainer()`.

Each retention method is a mixin beside its own code (EWC in `hf_retain.ewc`, distillation in `hf_retain.distill`,
...). The compositions here stack every mixin on top of transformers' `Trainer` or TRL's `SFTTrainer`; every mixin
is a no-op unless its `RetentionConfig` switch is on, so a plain `RetentionConfig()` trains exactly like the base
class. Users with their own Trainer subclass compose the mixins they want instead:

    >>> from trl import SFTTrainer
    >>> from hf_retain.mixin import RetentionMixin
    >>> class MyTrainer(RetentionMixin, SFTTrainer): ...
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback
from trl import SFTTrainer

from hf_retain.config import RetentionConfig
from hf_retain.mixin import RetentionMixin

__all__ = ["RetentionTrainer", "RetentionSFTTrainer", "build_trainer", "retention_callbacks"]

# Mixins stacked left of the base Trainer, outermost first. Add each method's mixin here when it lands.
RETENTION_MIXINS: tuple[type, ...] = ()


class RetentionTrainer(*RETENTION_MIXINS, RetentionMixin, Trainer):  # type: ignore[misc]
    """`transformers.Trainer` plus every hf_retain method, driven by ``retention=RetentionConfig(...)``."""


class RetentionSFTTrainer(*RETENTION_MIXINS, RetentionMixin, SFTTrainer):  # type: ignore[misc]
    """`trl.SFTTrainer` plus every hf_retain method, driven by ``retention=RetentionConfig(...)``."""


def retention_callbacks(retention: RetentionConfig) -> list[TrainerCallback]:
    """The callbacks a `RetentionConfig` asks for (consistency check, lineage, curriculum, regression guard)."""
    callbacks: list[TrainerCallback] = []
    return callbacks


def build_trainer(
    model: Any,
    args: Any,
    *,
    retention: RetentionConfig | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    processing_class: Any = None,
    data_collator: Any = None,
    callbacks: list[TrainerCallback] | None = None,
    sft: bool = True,
    **kwargs: Any,
) -> Trainer:
    """Compose the trainer a recipe describes: the retention Trainer class, its callbacks, and its collator.

    The CLI, the recipes, the demo and the notebooks all build their trainer here, so there is one path.
    """
    retention = retention if retention is not None else RetentionConfig()
    trainer_cls = RetentionSFTTrainer if sft else RetentionTrainer
    all_callbacks = retention_callbacks(retention) + list(callbacks or [])
    return trainer_cls(
        model=model,
        args=args,
        retention=retention,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        data_collator=data_collator,
        callbacks=all_callbacks,
        **kwargs,
    )
