"""`OptimizerConsistencyCallback`: warn (or stop) when the fine-tune optimizer differs from the pretraining one.

Full fine-tuning with the optimizer that pretrained the model forgets less than switching (Liu, Wang, Zhang 2026,
"Optimizer-Model Consistency"; Moonlight's report, Table 6: 55.7 vs 50.2 MMLU after SFT with Muon vs AdamW on a
Muon-pretrained model). At ``on_train_begin`` (after the Trainer built its optimizer, before the first step) the
callback reads the model's pretraining optimizer (`read_pretraining_optimizer`) and the optimizer the Trainer really
uses (`finetune_optimizer`: the optimizer instance handed to callbacks, a DeepSpeed config section,
``RetentionConfig.optimizer``, ``TrainingArguments.optim``) and compares their canonical families (Adam ~ AdamW).

It works with any Trainer, SFTTrainer included, because it needs nothing but what callbacks receive.

Logging: the finding is appended to ``state.log_history`` (so it is in ``trainer_state.json``) and dispatched as
numeric metrics through the Trainer's callback handler's ``on_log`` (so wandb/tensorboard/mlflow callbacks from
``report_to`` record ``lineage/optimizer_mismatch`` at step 0). Callbacks are not given the Trainer, so the handler
is taken from the caller's frame when it is transformers' ``CallbackHandler``; if not, only ``log_history`` and the
Python warning carry the finding.

>>> from hf_retain import OptimizerConsistencyCallback
>>> callback = OptimizerConsistencyCallback(policy="warn", pretrained="muon")
>>> callback.policy
'warn'
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from transformers import TrainerCallback

from hf_retain.callbacks._handler import calling_handler
from hf_retain.errors import OptimizerMismatchError
from hf_retain.lineage.finetune import FinetuneOptimizer, finetune_optimizer
from hf_retain.lineage.info import OptimizerInfo, canonical_optimizer_name, same_family
from hf_retain.lineage.reader import lookup_pretraining_optimizer

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
            applied in exactly one place when an optimizer factory already does it.
    """

    def __init__(
        self, policy: str = "warn", *, pretrained: OptimizerInfo | str | None = None, model_id: str | None = None,
        retention: Any = None, mitigate: bool = False,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy={policy!r} is not allowed; choose one of {list(_POLICIES)}.")
        if isinstance(pretrained, str):
            pretrained = OptimizerInfo(name=canonical_optimizer_name(pretrained), source="given by the user",
                                       evidence=f"OptimizerConsistencyCallback(pretrained={pretrained!r})",
                                       confidence=1.0, variant=pretrained)
        self.policy = policy
        self.pretrained = pretrained
        self.model_id = model_id
        self.retention = retention
        self.mitigate = bool(mitigate)
        self.finding: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------------------
    def check(self, model: Any = None, args: Any = None, optimizer: Any = None) -> dict[str, Any]:
        """Run the comparison and return the finding (also stored in ``self.finding``); raises nothing."""
        notes: list[str] = []
        chain: list[str] = []
        pre = self.pretrained
        if pre is None:
            target = self.model_id or model
            if target is not None:
                found = lookup_pretraining_optimizer(target)
                pre, notes, chain = found.info, found.notes, found.chain
        used = finetune_optimizer(args, optimizer=optimizer, retention=self.retention)
        status = "unknown"
        if pre is not None and used is not None:
            status = "match" if same_family(pre.name, used.name) else "mismatch"
        self.finding = {
            "status": status,
            "pretrain_optimizer": pre.name if pre else None,
            "pretrain_source": pre.source if pre else None,
            "pretrain_evidence": pre.evidence if pre else None,
            "pretrain_confidence": pre.confidence if pre else None,
            "chain": chain or (pre.chain if pre else []),
            "finetune_optimizer": used.name if used else None,
            "finetune_variant": used.variant if used else None,
            "finetune_source": used.where if used else None,
            "notes": notes,
        }
        return self.finding

    def message(self, finding: dict[str, Any] | None = None) -> str:
        """The human-readable warning: what, where, why it matters, what to do."""
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
            "  why it matters: full fine-tuning with the optimizer that pretrained the model forgets less than "
            "switching (Liu, Wang, Zhang 2026; Moonlight: 55.7 vs 50.2 MMLU after SFT with Muon vs AdamW on a "
            "Muon-pretrained model).\n"
            f"  what to do: fine-tune with {pre} (e.g. RetentionConfig(optimizer={pre!r}) or "
            f"RetentionConfig(optimizer='auto')), or lower the learning rate and weight decay "
            "(RetentionConfig(mismatch_mitigation=True) scales both by 0.5)."
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
            if self.mitigate:
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
        handler = calling_handler(self)
        if handler is not None:
            try:
                handler.on_log(args, state, control, logs=dict(metrics))
            except Exception as err:  # an integration failing to log must not stop training
                logger.warning("could not send the optimizer-consistency metrics to report_to integrations: %s", err)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[override]
        return control


def _mitigate(optimizer: Any, lr_scheduler: Any, retention: Any) -> str:
    """Scale LR (optimizer groups and the scheduler's base LRs) and weight decay down on a mismatch."""
    from hf_retain.lineage.finetune import unwrap_optimizer

    lr_scale = float(getattr(retention, "mismatch_lr_scale", 0.5))
    wd_scale = float(getattr(retention, "mismatch_wd_scale", 0.5))
    inner = unwrap_optimizer(optimizer) if optimizer is not None else None
    groups = getattr(inner, "param_groups", None) or []
    for group in groups:
        for key in ("lr", "initial_lr"):
            if isinstance(group.get(key), (int, float)):
                group[key] = group[key] * lr_scale
        if isinstance(group.get("weight_decay"), (int, float)):
            group["weight_decay"] = group["weight_decay"] * wd_scale
    if lr_scheduler is not None and isinstance(getattr(lr_scheduler, "base_lrs", None), list):
        lr_scheduler.base_lrs = [lr * lr_scale for lr in lr_scheduler.base_lrs]
    return (f"mismatch_mitigation: scaled the learning rate by {lr_scale} and weight decay by {wd_scale} "
            f"in {len(groups)} parameter group(s).")


def describe_finetune(used: FinetuneOptimizer | None) -> str:
    """Short text for the fine-tune optimizer (used by the CLI and reports)."""
    return "unknown" if used is None else f"{used.name} ({used.variant}, from {used.where})"
