"""The ready compositions `RetentionTrainer` and `RetentionSFTTrainer`, and `build_trainer()`.

Each retention method is a mixin beside its own code (EWC in `hf_retain.ewc`, distillation in `hf_retain.distill`,
...). The compositions here stack every mixin on top of transformers' `Trainer` or TRL's `SFTTrainer`; every mixin
is a no-op unless its `RetentionConfig` switch is on, so a plain `RetentionConfig()` trains exactly like the base
class. `RetentionMixin` (their common base) turns the config into state and callbacks, so a class users compose from
the mixins themselves behaves the same:

    >>> from trl import SFTTrainer
    >>> from hf_retain.ewc.mixin import EWCMixin
    >>> from hf_retain.replay.mixin import ReplayMixin
    >>> class MyTrainer(EWCMixin, ReplayMixin, SFTTrainer): ...
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback
from trl import SFTTrainer

from hf_retain.config import RetentionConfig
from hf_retain.distill.mixin import DistillationMixin
from hf_retain.ewc.mixin import EWCMixin
from hf_retain.mixin import RetentionMixin
from hf_retain.optim.mixin import OptimizerMixin
from hf_retain.replay.mixin import ReplayMixin

__all__ = ["RETENTION_MIXINS", "RetentionTrainer", "RetentionSFTTrainer", "build_trainer"]

# Every method's mixin, in the order the ready compositions stack them (any order trains the same; see
# hf_retain.mixin for the contract).
RETENTION_MIXINS: tuple[type, ...] = (OptimizerMixin, EWCMixin, DistillationMixin, ReplayMixin)


class RetentionTrainer(*RETENTION_MIXINS, RetentionMixin, Trainer):  # type: ignore[misc]
    """`transformers.Trainer` plus every hf_retain method, driven by ``retention=RetentionConfig(...)``."""


class RetentionSFTTrainer(*RETENTION_MIXINS, RetentionMixin, SFTTrainer):  # type: ignore[misc]
    """`trl.SFTTrainer` plus every hf_retain method, driven by ``retention=RetentionConfig(...)``."""


def build_trainer(
    model: Any,
    args: Any,
    *,
    retention: RetentionConfig | None = None,
    callbacks: list[TrainerCallback] | None = None,
    sft: bool = True,
    **kwargs: Any,
) -> Trainer:
    """`RetentionSFTTrainer` (or, with ``sft=False``, `RetentionTrainer`) with these arguments: the one trainer the
    recipe runner, the demo, the benchmark and the notebooks build. Callbacks the config asks for are added by the
    trainer itself."""
    trainer_cls = RetentionSFTTrainer if sft else RetentionTrainer
    return trainer_cls(model=model, args=args, retention=retention, callbacks=callbacks, **kwargs)
