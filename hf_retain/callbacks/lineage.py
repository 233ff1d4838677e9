"""`LineageCallback`: record which optimizer trained this run in the output model card's YAML metadata.

On every save (``output_dir/README.md`` and ``checkpoint-N/README.md``) and at train end it writes an
``hf_retain_lineage`` block with `huggingface_hub.ModelCard`, keeping the rest of the card: the optimizer family, its
class and hyperparameters as actually used (read from the optimizer's param groups), LR schedule, weight decay, the
base model and its pretraining optimizer as read (the run's shared lineage lookup when given ``lineage=``, e.g. by
`RetentionMixin`; else one lookup of its own), and the retention methods. `read_pretraining_optimizer` on the
output then finds exactly this optimizer, so the next fine-tune can be checked against it.

It runs after the Trainer's own saves in the same event (TRL's SFTTrainer rewrites ``output_dir/README.md`` at each
checkpoint; ``on_save`` comes after that), and only on the main process.

>>> from hf_retain import LineageCallback, RetentionConfig
>>> LineageCallback(retention=RetentionConfig()).retention.methods
[]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_retain import __version__
from hf_retain.lineage.finetune import finetune_optimizer
from hf_retain.lineage.info import OptimizerInfo
from hf_retain.lineage.reader import LineageLookup, lookup_pretraining_optimizer
from hf_retain.lineage.writer import write_lineage

__all__ = ["LineageCallback"]

logger = logging.getLogger(__name__)


class LineageCallback(TrainerCallback):
    """Write this run's optimizer lineage into the model card on save and at train end.

    Args:
        retention: the run's `RetentionConfig` (its ``methods`` are recorded; its ``optimizer`` is a fallback when no
            optimizer instance is visible).
        base_model: the model this run starts from, when ``model.name_or_path`` is not it (e.g. a local copy).
        pretrained: the base's pretraining optimizer if already known (skips the lookup).
        write_checkpoints: also write ``checkpoint-N/README.md`` on every save.
        lineage: returns the run's pretraining lineage of the trained model (`RetentionMixin.pretraining_lineage`),
            so the callback shares the trainer's one lookup; used unless ``base_model`` names another model.
            Without it the callback looks the base model up once itself.
    """

    def __init__(
        self, retention: Any = None, *, base_model: str | None = None, pretrained: OptimizerInfo | None = None,
        write_checkpoints: bool = True, lineage: Callable[[], LineageLookup] | None = None,
    ) -> None:
        if lineage is not None and not callable(lineage):
            raise TypeError(f"lineage must be a callable returning a LineageLookup (e.g. trainer.pretraining_lineage), "
                            f"got {type(lineage).__name__}.")
        self.retention = retention
        self.base_model = base_model
        self.pretrained = pretrained
        self.write_checkpoints = write_checkpoints
        self.lineage_source = lineage
        self._base_given = base_model is not None
        self._looked_up = pretrained is not None
        self._optimizer: Any = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):  # type: ignore[override]
        self._optimizer = optimizer
        if self.base_model is None and model is not None:
            name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
            self.base_model = name or None
        if not self._looked_up:
            self.pretrained = self._pretraining()
            self._looked_up = True
        return control

    def _pretraining(self) -> OptimizerInfo | None:
        """The base model's pretraining optimizer: the shared lookup, or one of our own; None when unknown."""
        if self.lineage_source is not None and not self._base_given:
            return self.lineage_source().info
        if not self.base_model:
            return None
        try:
            return lookup_pretraining_optimizer(self.base_model).info
        except (ValueError, TypeError) as err:
            logger.warning("hf_retain lineage: could not read the base model's optimizer: %s", err)
            return None

    def lineage(self, args: Any, optimizer: Any = None) -> dict[str, Any]:
        """The ``hf_retain_lineage`` block for this run (what `on_save`/`on_train_end` write)."""
        used = finetune_optimizer(args, optimizer=optimizer if optimizer is not None else self._optimizer,
                                  retention=self.retention)
        if used is None:
            raise RuntimeError("LineageCallback could not determine the optimizer; pass TrainingArguments with optim "
                               "set or let the Trainer build its optimizer before saving.")
        schedule = getattr(args, "lr_scheduler_type", None)
        opt = {"name": used.name, "variant": used.variant, "class": used.where, **used.hyper}
        if opt.get("weight_decay") is None and getattr(args, "weight_decay", None) is not None:
            opt["weight_decay"] = args.weight_decay
        block: dict[str, Any] = {
            "optimizer": opt,
            "lr_schedule": str(getattr(schedule, "value", schedule)) if schedule is not None else None,
            "warmup": getattr(args, "warmup_steps", None) or getattr(args, "warmup_ratio", None),
            "learning_rate": getattr(args, "learning_rate", None),
            "weight_decay": opt.get("weight_decay"),
            "base_model": self.base_model,
            "base_model_optimizer": _pretrained_record(self.pretrained),
            "retention_methods": list(getattr(self.retention, "methods", []) or []),
            "written_by": f"hf_retain {__version__}",
        }
        return block

    def _write(self, args: Any, state: Any, folder: str) -> None:
        if not state.is_world_process_zero:
            return
        try:
            block = self.lineage(args)
            base = self.base_model if self.base_model and not os.path.isdir(self.base_model) else None
            write_lineage(os.path.join(folder, "README.md"), block, base_model=base)
        except (OSError, RuntimeError, ValueError) as err:
            logger.warning("hf_retain lineage: could not write the lineage into %s/README.md: %s", folder, err)

    def on_save(self, args, state, control, **kwargs):  # type: ignore[override]
        self._write(args, state, args.output_dir)
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if self.write_checkpoints and os.path.isdir(checkpoint):
            self._write(args, state, checkpoint)
        return control

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[override]
        self._write(args, state, args.output_dir)
        return control


def _pretrained_record(info: OptimizerInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"name": info.name, "variant": info.variant, "source": info.source, "evidence": info.evidence[:300],
            "confidence": info.confidence, "chain": list(info.chain)}
