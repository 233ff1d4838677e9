"""`RetentionMixin`: the one base of every hf_retain Trainer mixin, and the contract they share.

It is the one place that turns a `RetentionConfig` into trainer state and callbacks, so `RetentionTrainer`,
`RetentionSFTTrainer` and any class a user composes from the mixins behave the same.

The contract:

* **Order.** Mixins go left of the Trainer class: ``class MyTrainer(EWCMixin, DistillationMixin, SFTTrainer)``.
  Among themselves any order gives the same training (each overrides different hooks, or adds a term to the loss);
  a mixin right of the Trainer class would never run, so constructing such a class raises `MixinOrderError`.
* **Hooks each mixin overrides** (and always calls ``super()`` in):

  =====================  ==========================================================================
  mixin                  overrides
  =====================  ==========================================================================
  `OptimizerMixin`       ``create_optimizer``, ``train`` (DeepSpeed optimizer config)
  `EWCMixin`             ``compute_loss`` (penalty gradient once per optimizer step), ``train``
  `DistillationMixin`    ``compute_loss`` (divergence inside the model's forward), ``train``
  `ReplayMixin`          ``get_train_dataloader`` (wraps the training collator), ``__init__``
  `RetentionMixin`       ``__init__`` (retention=, callbacks), ``compute_loss`` (drops the replay mask),
                         ``log`` (the one metrics flush), ``_save_checkpoint``, ``train`` (resume)
  =====================  ==========================================================================

* **State.** Each mixin owns its state and writes it into the checkpoint folder in ``save_retention_state``
  (safetensors/JSON, atomically) and reads it back in ``load_retention_state``, which `train` calls before the
  Trainer resumes; callbacks with state implement transformers' ``ExportableState``.
* **Metrics.** One store: mixins call `record_metric` (a windowed mean, summed over processes at log time) or
  `add_log_gauge` (a value read at log time); the single `log` override here writes them into the Trainer's
  training logs. Mixins do not override ``log``.
* **Loss scale.** `loss_is_window_normalized` says whether the Trainer divides ``compute_loss``'s result by the
  accumulation steps, so every extra loss term is scaled the same way.
* **Callbacks.** `retention_callbacks` adds the consistency check, the lineage writer, the regression guard and the
  replay curriculum the config asks for, each once: a callback of the same class the user passed is kept instead.
* **Lineage.** `pretraining_lineage` reads which optimizer pretrained the model once per run, on rank 0, and shares
  it with every rank, mixin and callback.

Example:
    >>> from transformers import Trainer
    >>> from hf_retain.mixin import RetentionMixin
    >>> class MyTrainer(RetentionMixin, Trainer): ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from hf_retain.callbacks.consistency import OptimizerConsistencyCallback
from hf_retain.callbacks.curriculum import CurriculumCallback
from hf_retain.callbacks.lineage import LineageCallback
from hf_retain.callbacks.regression import RegressionEarlyStoppingCallback
from hf_retain.config import RetentionConfig
from hf_retain.constants import REPLAY_MASK_KEY
from hf_retain.distributed import broadcast_object, enable_fsdp_on_cpu, rank
from hf_retain.errors import MixinOrderError, RecipeError
from hf_retain.lineage.reader import LineageLookup, lookup_pretraining_optimizer

__all__ = ["RetentionMixin", "REPLAY_MASK_KEY", "check_mixin_order", "retention_callbacks"]


def check_mixin_order(cls: type) -> None:
    """Raise `MixinOrderError` when an hf_retain mixin sits right of the Trainer class in ``cls``'s MRO."""
    mro = cls.__mro__
    trainer_at = next((i for i, base in enumerate(mro) if base is Trainer or (
        issubclass(base, Trainer) and not issubclass(base, RetentionMixin))), None)
    if trainer_at is None:
        return
    late = [base.__name__ for base in mro[trainer_at:] if issubclass(base, RetentionMixin)]
    if late:
        mixins = [base.__name__ for base in mro if issubclass(base, RetentionMixin) and base is not RetentionMixin
                  and base is not cls]
        raise MixinOrderError(
            f"{cls.__name__} lists {', '.join(late)} after the Trainer class {mro[trainer_at].__name__}, where the "
            f"Trainer's own methods run first and the mixin never would. Put hf_retain's mixins left of the Trainer "
            f"class: class {cls.__name__}({', '.join([*mixins, mro[trainer_at].__name__])})."
        )


def retention_callbacks(trainer: RetentionMixin, retention: RetentionConfig) -> list[TrainerCallback]:
    """The callbacks ``retention`` asks for, skipping any class ``trainer`` already has (a user's own instance)."""
    have = {type(cb) for cb in trainer.callback_handler.callbacks}
    lineage = trainer.pretraining_lineage
    wanted: list[TrainerCallback] = []
    if retention.consistency_policy != "off" and OptimizerConsistencyCallback not in have:
        wanted.append(OptimizerConsistencyCallback(policy=retention.consistency_policy, retention=retention,
                                                   lineage=lineage))
    if retention.record_lineage and LineageCallback not in have:
        wanted.append(LineageCallback(retention=retention, lineage=lineage))
    if retention.regression_suite and RegressionEarlyStoppingCallback not in have:
        guard = RegressionEarlyStoppingCallback.from_retention_config(retention)
        if guard is not None:
            wanted.append(guard)
    if retention.curriculum and CurriculumCallback not in have:
        wanted.append(CurriculumCallback(retention.curriculum))
    return wanted


class RetentionMixin:
    retention: RetentionConfig

    def __new__(cls, *args: Any, **kwargs: Any):
        check_mixin_order(cls)
        return super().__new__(cls)

    def __init__(self, *args: Any, retention: RetentionConfig | None = None, **kwargs: Any) -> None:
        if retention is not None and not isinstance(retention, RetentionConfig):
            raise TypeError(
                f"retention must be a RetentionConfig, got {type(retention).__name__}; build one with "
                "hf_retain.RetentionConfig(...)."
            )
        self.retention = retention if retention is not None else RetentionConfig()
        self._retention_resume_dir: str | None = None
        self._pretraining_lineage: LineageLookup | None = None
        self._retention_metrics: dict[str, torch.Tensor] = {}
        self._retention_gauges: dict[str, Callable[[], float | None]] = {}
        super().__init__(*args, **kwargs)
        for callback in retention_callbacks(self, self.retention):
            self.add_callback(callback)  # type: ignore[attr-defined]

    # ---- lineage -----------------------------------------------------------------------------------------------
    def pretraining_lineage(self) -> LineageLookup:
        """Which optimizer pretrained ``self.model``, looked up once per run on rank 0 and shared with every rank,
        mixin and callback. Call it on every rank at once (it broadcasts); a failed lookup is a note, not an error.
        """
        if self._pretraining_lineage is None:
            found = None
            if rank() == 0:
                try:
                    found = lookup_pretraining_optimizer(self.model)  # type: ignore[attr-defined]
                except Exception as err:  # a reader failure must not stop training
                    found = LineageLookup(info=None, notes=[f"the lineage lookup failed: {type(err).__name__}: {err}"])
            self._pretraining_lineage = broadcast_object(found)
        return self._pretraining_lineage

    # ---- distributed -------------------------------------------------------------------------------------------
    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        enable_fsdp_on_cpu(self)

    # ---- loss --------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop(REPLAY_MASK_KEY, None)
        return super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def loss_is_window_normalized(self, num_items_in_batch: Any) -> bool:
        """Whether ``compute_loss``'s result is already normalised over the whole gradient-accumulation window.

        Mirrors `Trainer.training_step`, which divides the loss by the accumulation steps unless it is; an extra
        loss term that must count once per window is multiplied by `accumulation_steps` when this is False.
        """
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is not None:
            return bool(explicit)
        return bool((getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
                    or getattr(self, "compute_loss_func", None) is not None)

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches in the current optimizer step (the last window of an epoch may be shorter)."""
        return max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)

    # ---- metrics -----------------------------------------------------------------------------------------------
    def record_metric(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float = 1.0) -> None:
        """Add ``total`` over ``count`` items to metric ``name``; the next training log writes the mean over the
        window, summed over processes. Every process must record the same names (zeros where it has none)."""
        total = torch.as_tensor(total, dtype=torch.float32).detach().reshape(())
        pair = torch.stack([total, torch.as_tensor(count, dtype=torch.float32, device=total.device).reshape(())])
        held = self._retention_metrics.get(name)
        self._retention_metrics[name] = pair if held is None else held + pair.to(held.device)

    def add_log_gauge(self, name: str, read: Callable[[], float | None]) -> None:
        """Write ``read()`` as ``name`` into every training log (None skips it); called on every process."""
        self._retention_gauges[name] = read

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log (evaluation logs carry eval_* keys)
            logs.update(self._flush_retention_metrics())
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    def _flush_retention_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._retention_metrics:
            names = sorted(self._retention_metrics)
            device = self.args.device  # type: ignore[attr-defined]
            totals = torch.stack([self._retention_metrics[n].to(device) for n in names])
            if self.accelerator.num_processes > 1:  # type: ignore[attr-defined]
                totals = self.accelerator.reduce(totals, reduction="sum")  # type: ignore[attr-defined]
            for name, (total, count) in zip(names, totals.tolist()):
                out[name] = total / max(count, 1.0)
            self._retention_metrics = {}
        for name, read in sorted(self._retention_gauges.items()):
            value = read()
            if value is not None and math.isfinite(value):
                out[name] = float(value)
        return out

    # ---- state -------------------------------------------------------------------------------------------------
    def save_retention_state(self, checkpoint_dir: str) -> None:
        """Write this mixin's state into ``checkpoint_dir`` (safetensors/JSON only). Override and call super()."""

    def load_retention_state(self, checkpoint_dir: str) -> None:
        """Restore what `save_retention_state` wrote. Override and call super()."""

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        checkpoint_dir = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"  # type: ignore[attr-defined]
        )
        os.makedirs(checkpoint_dir, exist_ok=True)
        self.save_retention_state(checkpoint_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if resume_from_checkpoint is None:
                raise RecipeError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} has no checkpoint-* folder; "  # type: ignore[attr-defined]
                    "pass the checkpoint path or train from scratch."
                )
        if resume_from_checkpoint:
            if not os.path.isdir(str(resume_from_checkpoint)):
                raise RecipeError(
                    f"resume_from_checkpoint={str(resume_from_checkpoint)!r} is not a folder. Pass a checkpoint "
                    f"folder written by this Trainer (output_dir/{PREFIX_CHECKPOINT_DIR}-<step>), True for the latest "
                    "one in output_dir, or nothing to train from scratch."
                )
            self._retention_resume_dir = str(resume_from_checkpoint)
            self.load_retention_state(str(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]
