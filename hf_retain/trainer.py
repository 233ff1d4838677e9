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
from hf_retain.distill import DistillationMixin
from hf_retain.ewc import EWCMixin
from hf_retain.mixin import RetentionMixin
from hf_retain.optim import OptimizerMixin
from hf_retain.replay.mixin import ReplayMixin

__all__ = ["RetentionTrainer", "RetentionSFTTrainer", "build_trainer", "retention_callbacks"]

# Mixins stacked left of the base Trainer, outermost first. compute_loss runs EWC (adds the penalty) around
# distillation (which pops the replay mask) around the Trainer's loss; ReplayMixin wraps the training collator the
# Trainer built; OptimizerMixin builds the optimizer RetentionConfig.optimizer names.
RETENTION_MIXINS: tuple[type, ...] = (OptimizerMixin, EWCMixin, DistillationMixin, ReplayMixin)


class RetentionTrainer(*RETENTION_MIXINS, RetentionMixin, Trainer):  # type: ignore[misc]
    """`transformers.Trainer` plus every hf_retain method, driven by ``retention=RetentionConfig(...)``."""


class RetentionSFTTrainer(*RETENTION_MIXINS, RetentionMixin, SFTTrainer):  # type: ignore[misc]
    """`trl.SFTTrainer` plus every hf_retain method, driven by ``retention=RetentionConfig(...)``."""


def retention_callbacks(retention: RetentionConfig) -> list[TrainerCallback]:
    """The callbacks a `RetentionConfig` asks for: the optimizer-consistency check, the lineage writer and the
    regression guard. (ReplayMixin adds the curriculum callback itself when `curriculum` is set.)"""
    from hf_retain.callbacks.consistency import OptimizerConsistencyCallback
    from hf_retain.callbacks.lineage import LineageCallback
    from hf_retain.callbacks.regression import RegressionEarlyStoppingCallback

    callbacks: list[TrainerCallback] = []
    if retention.consistency_policy != "off":
        callbacks.append(OptimizerConsistencyCallback(policy=retention.consistency_policy, retention=retention))
    if retention.record_lineage:
        callbacks.append(LineageCallback(retention=retention))
    guard = RegressionEarlyStoppingCallback.from_retention_config(retention)
    if guard is not None:
        callbacks.append(guard)
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
