"""Which optimizer a Trainer will actually use, and with which hyperparameters.

Looked up in this order, most concrete first: the optimizer instance (what ``create_optimizer`` built, a user's
``optimizers=(opt, sched)``, or ``optimizer_cls_and_kwargs``; callbacks receive it as ``optimizer`` at
``on_train_begin``), a DeepSpeed config ``optimizer`` section, ``RetentionConfig.optimizer``, then
``TrainingArguments.optim``. Wrappers (accelerate's ``AcceleratedOptimizer``, DeepSpeed's ZeRO optimizers) are
unwrapped to the optimizer that does the update.

>>> import torch
>>> opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3, betas=(0.9, 0.95))
>>> used = finetune_optimizer(optimizer=opt)
>>> used.name, used.hyper["betas"], used.where
('adamw', (0.9, 0.95), 'optimizer instance (torch.optim.adamw.AdamW)')
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from hf_retain.optim.policy import canonical_optimizer_name

__all__ = ["FinetuneOptimizer", "finetune_optimizer", "unwrap_optimizer", "optimizer_hyperparameters"]


@dataclass
class FinetuneOptimizer:
    """The fine-tuning optimizer: canonical family, the name as configured, where it was read, hyperparameters."""

    name: str
    variant: str
    where: str
    hyper: dict[str, Any] = field(default_factory=dict)


def unwrap_optimizer(optimizer: Any) -> Any:
    """Follow ``.optimizer`` through accelerate/DeepSpeed wrappers to the optimizer that performs the update."""
    seen = 0
    while seen < 8 and type(optimizer).__name__ in (
        "AcceleratedOptimizer", "DeepSpeedOptimizerWrapper", "DeepSpeedZeroOptimizer", "DeepSpeedZeroOptimizer_Stage3",
        "FP16_Optimizer", "BF16_Optimizer", "FP16_UnfusedOptimizer", "ZeROOptimizer", "LossScaleOptimizer",
    ) and getattr(optimizer, "optimizer", None) is not None:
        optimizer = optimizer.optimizer
        seen += 1
    return optimizer


def _class_family(optimizer: Any) -> tuple[str, str]:
    cls = type(optimizer)
    qualname = f"{cls.__module__}.{cls.__name__}"
    name = cls.__name__
    family = canonical_optimizer_name(name)
    # Adam implementations that decouple weight decay are AdamW (DeepSpeed's FusedAdam/CPUAdam, torch Adam flag)
    if family == "adam" and (getattr(optimizer, "adam_w_mode", False) or getattr(optimizer, "adamw_mode", False)
                             or (getattr(optimizer, "defaults", {}) or {}).get("decoupled_weight_decay")):
        family = "adamw"
    return family, qualname


def optimizer_hyperparameters(optimizer: Any) -> dict[str, Any]:
    """lr (the scheduler's initial lr when set), betas, eps, weight_decay, momentum of the first param group."""
    defaults = dict(getattr(optimizer, "defaults", None) or {})
    groups = getattr(optimizer, "param_groups", None) or []
    group = dict(groups[0]) if groups else {}
    merged = {**defaults, **{k: v for k, v in group.items() if k != "params"}}

    def number(*keys: str) -> float | None:
        for key in keys:
            value = merged.get(key)
            if hasattr(value, "item"):
                try:
                    value = value.item()
                except (RuntimeError, ValueError):
                    continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None

    betas = merged.get("betas")
    out: dict[str, Any] = {
        "lr": number("initial_lr", "lr"),
        "betas": tuple(float(b) for b in betas) if isinstance(betas, (list, tuple)) and all(
            isinstance(b, (int, float)) for b in betas) else None,
        "eps": number("eps"),
        "weight_decay": number("weight_decay"),
        "momentum": number("momentum"),
    }
    if len(groups) > 1:
        out["param_groups"] = len(groups)
    return out


def _deepspeed_optimizer(args: Any) -> tuple[str, dict[str, Any]] | None:
    config: Any = None
    hf_ds = getattr(args, "hf_deepspeed_config", None)
    if hf_ds is not None:
        config = getattr(hf_ds, "config", None)
    if config is None:
        config = getattr(args, "deepspeed", None)
    if isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, json.JSONDecodeError):
            return None
    if not isinstance(config, dict):
        return None
    section = config.get("optimizer")
    if isinstance(section, dict) and isinstance(section.get("type"), str):
        params = section.get("params") if isinstance(section.get("params"), dict) else {}
        return section["type"], params
    return None


def finetune_optimizer(
    args: Any = None, *, optimizer: Any = None, retention: Any = None, trainer: Any = None
) -> FinetuneOptimizer | None:
    """The optimizer a Trainer uses (or will use). Pass what you have; the most concrete source wins."""
    if trainer is not None:
        args = args if args is not None else getattr(trainer, "args", None)
        optimizer = optimizer if optimizer is not None else getattr(trainer, "optimizer", None)
        retention = retention if retention is not None else getattr(trainer, "retention", None)
    if optimizer is not None:
        inner = unwrap_optimizer(optimizer)
        if type(inner).__name__ not in ("DummyOptim", "LayerWiseDummyOptimizer"):
            family, qualname = _class_family(inner)
            where = f"optimizer instance ({qualname})"
            variant = type(inner).__name__
            configured = getattr(args, "optim", None) if args is not None else None
            if configured:
                configured = str(getattr(configured, "value", configured))
                if canonical_optimizer_name(configured) == family:
                    variant = configured  # keep e.g. "adamw_torch_fused" as the variant
            return FinetuneOptimizer(family, variant, where, optimizer_hyperparameters(inner))
    if trainer is not None and getattr(trainer, "optimizer_cls_and_kwargs", None):
        cls, kwargs = trainer.optimizer_cls_and_kwargs
        # hf_retain's OptimizerFactory builds the optimizer named in its kwargs (e.g. "muon"), not one of its class.
        named = kwargs.get("name") if getattr(cls, "__name__", "") == "OptimizerFactory" else None
        family = canonical_optimizer_name(named or getattr(cls, "__name__", str(cls)))
        hyper = {k: kwargs.get(k) for k in ("lr", "betas", "eps", "weight_decay") if k in kwargs}
        return FinetuneOptimizer(family, getattr(cls, "__name__", str(cls)), "Trainer(optimizer_cls_and_kwargs=...)",
                                 hyper)
    if args is not None:
        ds = _deepspeed_optimizer(args)
        if ds is not None:
            name, params = ds
            family = canonical_optimizer_name(name)
            if family == "adam" and params.get("adam_w_mode", True) and params.get("weight_decay"):
                family = "adamw"  # DeepSpeed's Adam defaults to adam_w_mode=True (decoupled weight decay)
            hyper = {"lr": params.get("lr"), "betas": tuple(params["betas"]) if isinstance(
                params.get("betas"), (list, tuple)) else None, "eps": params.get("eps"),
                "weight_decay": params.get("weight_decay")}
            return FinetuneOptimizer(family, name, "DeepSpeed config optimizer section", hyper)
    retention_name = getattr(retention, "optimizer", None)
    if isinstance(retention_name, str) and retention_name and retention_name != "auto":
        return FinetuneOptimizer(canonical_optimizer_name(retention_name), retention_name, "RetentionConfig.optimizer",
                                 dict(getattr(retention, "optimizer_kwargs", None) or {}))
    if args is not None and getattr(args, "optim", None):
        configured = str(getattr(args.optim, "value", args.optim))
        hyper = {
            "lr": getattr(args, "learning_rate", None),
            "betas": (args.adam_beta1, args.adam_beta2) if "adam" in configured.lower() else None,
            "eps": getattr(args, "adam_epsilon", None) if "adam" in configured.lower() else None,
            "weight_decay": getattr(args, "weight_decay", None),
        }
        return FinetuneOptimizer(canonical_optimizer_name(configured), configured, "TrainingArguments.optim", hyper)
    return None
