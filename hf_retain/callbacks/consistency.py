"""`OptimizerConsistencyCallback`: warn (or stop) when the fine-tune optimizer differs from the pretraining one.

Moonlight's report (Liu et al. 2025, Muon is Scalable for LLM Training, arXiv:2502.16982) found that a model
pretrained with Muon did better after supervised fine-tuning with Muon than with AdamW. The effect is real at that
scale but not universal: on hf_retain's tiny benchmark, Muon fine-tuning forgot a little less whichever optimizer
pretrained the model. So the callback reports the switch and leaves the choice to you.

At ``on_train_begin`` (after the Trainer built its optimizer, before the first step) it takes the model's
pretraining optimizer (the run's shared lineage lookup when given ``lineage=``, e.g. by `RetentionMixin`; else one
lookup of its own) and the optimizer the Trainer really uses (`finetune_optimizer`: the optimizer instance handed
to callbacks, a DeepSpeed config section, ``RetentionConfig.optimizer``, ``TrainingArguments.optim``) and compares
their families with `hf_retain.optim.policy` (Adam ~ AdamW), the same policy `OptimizerMixin` decides with.

It works with any Trainer, SFTTrainer included, because it needs nothing but what callbacks receive.

Logging: the finding is appended to ``state.log_history`` (so it is in ``trainer_state.json``) and dispatched as
numeric metrics through the Trainer's callback handler's ``on_log`` (so wandb/tensorboard/mlflow callbacks from
``report_to`` record ``lineage/optimizer_mismatch`` at step 0). Callbacks are not given the Trainer, so the handler
is taken from the caller's frame when it is transformers' ``CallbackHandler``; if not, only ``log_history`` and the
Python warning carry the finding.

>>> import torch
>>> from hf_retain import OptimizerConsistencyCallback
>>> callback = OptimizerConsistencyCallback(policy="warn", pretrained="muon")
>>> callback.check(optimizer=torch.optim.SGD([torch.zeros(1)], lr=0.1))["status"]
'mismatch'
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from hf_retain.callbacks._handler import report_through_handler
from hf_retain.errors import OptimizerMismatchError
from hf_retain.lineage.finetune import finetune_optimizer, unwrap_optimizer
from hf_retain.lineage.info import OptimizerInfo
from hf_retain.lineage.reader import LineageLookup, lookup_pretraining_optimizer
from hf_retain.optim.policy import apply_mitigation, canonical_optimizer_name, consistency_status, mitigation_scales

__all__ = ["OptimizerConsistencyCallback", "OptimizerMismatchError", "OptimizerMismatchWarning"]

logger = logging.getLogger(__name__)
_POLICIES = ("warn", "error", "off")


class OptimizerMismatchWarning(UserWarning):
    """Emitted by ``policy="warn"`` when the fine-tune optimizer differs from the pretraining one."""


class OptimizerConsistencyCallback(TrainerCallback):
    """Compare the fine-tune optimizer with the one that pretrained the model, at train begin.

    Args:
        policy: ``"warn"`` (default), ``"error"`` (raise `OptimizerMismatchError` before the first step) or ``"off"``.
        pretrained: skip the lookup and use this pretraining optimizer (an `OptimizerInfo` or a name such as "muon").
        model_id: where to read the lineage when the model's ``name_or_path`` is empty or not the base you mean.
        retention: a `RetentionConfig`; its ``optimizer`` is used when no optimizer instance is available, and its
            ``mismatch_lr_scale``/``mismatch_wd_scale`` when ``mitigate`` is on.
        mitigate: on a mismatch (policy "warn"), scale the LR (param groups and the scheduler's base LRs) and weight
            decay down by the retention config's scales (0.5 and 0.5 by default). Off by default so the scaling is
            applied in exactly one place when `OptimizerMixin` (``RetentionConfig.mismatch_mitigation``) already
            does it.
        lineage: returns the run's pretraining lineage (`RetentionMixin.pretraining_lineage`), so the callback
            shares the trainer's one lookup; without it the callback looks the model up once itself.
    """

    def __init__(
        self, policy: str = "warn", *, pretrained: OptimizerInfo | str | None = None, model_id: str | None = None,
        retention: Any = None, mitigate: bool = False, lineage: Callable[[], LineageLookup] | None = None,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy={policy!r} is not allowed; choose one of {list(_POLICIES)}.")
        if isinstance(pretrained, str):
            pretrained = OptimizerInfo(name=canonical_optimizer_name(pretrained), source="given by the user",
                                       evidence=f"OptimizerConsistencyCallback(pretrained={pretrained!r})",
                                       confidence=1.0, variant=pretrained)
        if lineage is not None and not callable(lineage):
            raise TypeError(f"lineage must be a callable returning a LineageLookup (e.g. trainer.pretraining_lineage), "
                            f"got {type(lineage).__name__}.")
        self.policy = policy
        self.pretrained = pretrained
        self.model_id = model_id
        self.retention = retention
        self.mitigate = bool(mitigate)
        self.lineage = lineage
        self.finding: dict[str, Any] | None = None
        self._own_lookup: tuple[Any, LineageLookup] | None = None  # (what was looked up, the answer)

    # ------------------------------------------------------------------------------------------------------------
    def pretraining(self, model: Any = None) -> LineageLookup:
        """The pretraining lineage this callback checks against: ``pretrained``, else a lookup of ``model_id``,
        else the shared ``lineage()``, else one lookup of ``model`` (kept for later calls); never raises."""
        if self.pretrained is not None:
            return LineageLookup(info=self.pretrained)
        target = self.model_id if self.model_id is not None else model
        if self.model_id is None and self.lineage is not None:
            return self.lineage()
        if target is None:
            return LineageLookup(info=None, notes=["no model to look up (pass model_id= or pretrained=)."])
        if self._own_lookup is None or self._own_lookup[0] is not target:
            try:
                found = lookup_pretraining_optimizer(target)
            except (TypeError, ValueError) as err:
                found = LineageLookup(info=None, notes=[f"the lineage lookup failed: {err}"])
            self._own_lookup = (target, found)
        return self._own_lookup[1]

    def check(self, model: Any = None, args: Any = None, optimizer: Any = None) -> dict[str, Any]:
        """Run the comparison and return the finding (also stored in ``self.finding``); raises nothing."""
        found = self.pretraining(model)
        pre = found.info
        used = finetune_optimizer(args, optimizer=optimizer, retention=self.retention)
        status = consistency_status(used.name if used else None, pre.name if pre else None)
        self.finding = {
            "status": status,
            "pretrain_optimizer": pre.name if pre else None,
            "pretrain_source": pre.source if pre else None,
            "pretrain_evidence": pre.evidence if pre else None,
            "pretrain_confidence": pre.confidence if pre else None,
            "chain": list(found.chain) or (list(pre.chain) if pre else []),
            "finetune_optimizer": used.name if used else None,
            "finetune_variant": used.variant if used else None,
            "finetune_source": used.where if used else None,
            "notes": list(found.notes),
        }
        return self.finding

    def message(self, finding: dict[str, Any] | None = None) -> str:
        """The human-readable warning: what, where, why it may matter, what to do."""
        f = finding or self.finding or {}
        pre, used = f.get("pretrain_optimizer"), f.get("finetune_optimizer")
        if f.get("status") == "unknown":
            missing = "the pretraining optimizer" if pre is None else "the fine-tune optimizer"
            return (f"hf_retain optimizer consistency: could not determine {missing}; no check done. "
                    + " ".join(f.get("notes") or []))
        if f.get("status") == "match":
            return (f"hf_retain optimizer consistency: fine-tuning with {used} ({f.get('finetune_variant')}) matches "
                    f"the pretraining optimizer {pre} ({f.get('pretrain_source')}).")
        return (
            f"hf_retain optimizer consistency: this model was pretrained with {pre} but you are fine-tuning with "
            f"{used} ({f.get('finetune_variant')}, from {f.get('finetune_source')}).\n"
            f"  found in: {f.get('pretrain_source')}; evidence: {f.get('pretrain_evidence')!s:.200}"
            f"{'; chain: ' + ' -> '.join(f['chain']) if f.get('chain') else ''}\n"
            "  why it may matter: Moonlight's report (Liu et al. 2025, arXiv:2502.16982) found a Muon-pretrained "
            "model did better after fine-tuning with Muon than with AdamW; the effect is not universal (on "
            "hf_retain's tiny benchmark it did not show).\n"
            f"  what to do: fine-tune with {pre} (e.g. RetentionConfig(optimizer={pre!r}) or "
            f"RetentionConfig(optimizer='auto')), or lower the learning rate and weight decay "
            "(RetentionConfig(mismatch_mitigation=True) scales both by 0.5), or set policy='off' if you switch on "
            "purpose."
        )

    # ------------------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):  # type: ignore[override]
        if self.policy == "off":
            return control
        finding = self.check(model=model, args=args, optimizer=optimizer)
        text = self.message(finding)
        if finding["status"] == "mismatch":
            if self.policy == "error":
                raise OptimizerMismatchError(text)
            warnings.warn(text, OptimizerMismatchWarning, stacklevel=2)
            if self.mitigate and state.global_step > 0:
                # Resumed: the checkpoint's optimizer and scheduler already hold the scaled values.
                finding["mitigation"] = "mismatch_mitigation: resumed at step " \
                                        f"{state.global_step}; the checkpoint's learning rates are already scaled."
            elif self.mitigate:
                finding["mitigation"] = _mitigate(optimizer, kwargs.get("lr_scheduler"), self.retention)
                logger.warning("hf_retain: %s", finding["mitigation"])
        else:
            logger.info(text)
        self._log(args, state, control, finding)
        return control

    def _log(self, args: Any, state: Any, control: Any, finding: dict[str, Any]) -> None:
        known = finding["status"] != "unknown"
        metrics = {"lineage/optimizer_check_done": 1.0 if known else 0.0}
        if known:
            metrics["lineage/optimizer_mismatch"] = 1.0 if finding["status"] == "mismatch" else 0.0
        entry = {**metrics,
                 "lineage/pretrain_optimizer": finding["pretrain_optimizer"] or "unknown",
                 "lineage/finetune_optimizer": finding["finetune_optimizer"] or "unknown",
                 "lineage/status": finding["status"], "step": state.global_step}
        state.log_history.append(entry)
        report_through_handler(self, args, state, control, metrics)


def _mitigate(optimizer: Any, lr_scheduler: Any, retention: Any) -> str:
    """Scale LR (optimizer groups and the scheduler's base LRs) and weight decay down on a mismatch."""
    lr_scale, wd_scale = mitigation_scales("mismatch", float(getattr(retention, "mismatch_lr_scale", 0.5)),
                                           float(getattr(retention, "mismatch_wd_scale", 0.5)))
    inner = unwrap_optimizer(optimizer) if optimizer is not None else None
    count = apply_mitigation(getattr(inner, "param_groups", None) or [], lr_scale, wd_scale, scheduler=lr_scheduler)
    return (f"mismatch_mitigation: scaled the learning rate by {lr_scale} and weight decay by {wd_scale} "
            f"in {count} parameter group(s).")
