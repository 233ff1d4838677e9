"""`RetentionMixin`: the one base every hf_retain Trainer mixin shares.

It does three small things so that each method's mixin (EWC, distillation, ...) does not repeat them:

* takes the ``retention=`` keyword once, whatever the order of mixins, and keeps it as ``self.retention``;
* gives every mixin a checkpoint hook pair, ``save_retention_state(dir)`` / ``load_retention_state(dir)``, called
  on every Trainer checkpoint and on ``train(resume_from_checkpoint=...)``; a mixin overrides both and calls
  ``super()`` so all of them run;
* turns FSDP2 on for CPU runs launched with ``accelerate launch --use_fsdp`` (accelerate leaves CPU processes
  unsharded; see `hf_retain.distributed`).

Compose it with any Trainer subclass; mixins go left of the Trainer class:

    >>> from transformers import Trainer
    >>> from hf_retain.mixin import RetentionMixin
    >>> class MyTrainer(RetentionMixin, Trainer): ...
"""

from __future__ import annotations

import os
from typing import Any

from hf_retain.config import RetentionConfig

__all__ = ["RetentionMixin", "REPLAY_MASK_KEY"]

# Batch key a replay collator may add: a bool tensor [batch] marking replayed rows. Mixins that use it pop it
# before the model's forward pass; `RetentionMixin.compute_loss` drops it if nobody did.
REPLAY_MASK_KEY = "replay_mask"


class RetentionMixin:
    retention: RetentionConfig

    def __init__(self, *args: Any, retention: RetentionConfig | None = None, **kwargs: Any) -> None:
        if retention is not None and not isinstance(retention, RetentionConfig):
            raise TypeError(
                f"retention must be a RetentionConfig, got {type(retention).__name__}; build one with "
                "hf_retain.RetentionConfig(...)."
            )
        self.retention = retention if retention is not None else RetentionConfig()
        self._retention_resume_dir: str | None = None
        super().__init__(*args, **kwargs)

    # ---- distributed -------------------------------------------------------------------------------------------
    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        from hf_retain.distributed import enable_fsdp_on_cpu

        enable_fsdp_on_cpu(self)

    # ---- loss --------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop(REPLAY_MASK_KEY, None)
        return super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    # ---- state -------------------------------------------------------------------------------------------------
    def save_retention_state(self, checkpoint_dir: str) -> None:
        """Write this mixin's state into ``checkpoint_dir`` (safetensors/JSON only). Override and call super()."""

    def load_retention_state(self, checkpoint_dir: str) -> None:
        """Restore what `save_retention_state` wrote. Override and call super()."""

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        checkpoint_dir = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"  # type: ignore[attr-defined]
        )
        os.makedirs(checkpoint_dir, exist_ok=True)
        self.save_retention_state(checkpoint_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} has no checkpoint-* folder; "  # type: ignore[attr-defined]
                    "pass the checkpoint path or train from scratch."
                )
        if resume_from_checkpoint:
            self._retention_resume_dir = str(resume_from_checkpoint)
            self.load_retention_state(str(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]
