"""`create_optimizer(model, name, ...)`: an optimizer from a name, with the right parameter groups for each.

Names: ``adamw``, ``adam`` (torch's), ``adafactor`` (transformers'), ``sgd``, ``muon`` (`MuonWithAdamW`: Muon for
hidden matrices, AdamW for the rest) and ``auto``: the optimizer that pretrained the model, as the lineage reader
(`hf_retain.lineage.lookup_pretraining_optimizer`) finds it; when it finds none, or one we do not provide, ``auto``
falls back to ``fallback=`` (default ``adamw``) and logs why (`hf_retain.optim.policy.resolve_auto`).

Every optimizer gets transformers.Trainer's grouping: no weight decay on biases and norms. Hyperparameters are the
optimizer's own keyword names; one it does not take is an error that lists those it does.

For Muon, ``lr`` and ``weight_decay`` serve both halves unless ``adamw_lr``/``adamw_weight_decay`` are given, and
``eps`` is torch's name on both sides (Muon's Newton-Schulz normalisation floor, AdamW's denominator term) unless
``adamw_eps`` sets AdamW's alone; unset, each half keeps its torch default (1e-7 and 1e-8). ``adjust_lr_fn``
defaults to ``"match_rms_adamw"`` (torch's default is ``"original"``), see `hf_retain.optim.muon`.

With a plain `transformers.Trainer` or `trl.SFTTrainer`, pass `optimizer_cls_and_kwargs(...)` (a factory the
Trainer calls with its model):

    >>> from transformers import Trainer, TrainingArguments
    >>> from hf_retain import build_tiny_model
    >>> from hf_retain.optim import optimizer_cls_and_kwargs
    >>> args = TrainingArguments(output_dir="/tmp/muon_doc", use_cpu=True, report_to=[])
    >>> trainer = Trainer(model=build_tiny_model(num_hidden_layers=2), args=args,
    ...                   optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("muon", lr=2e-3, weight_decay=0.01))
    >>> type(trainer.create_optimizer()).__name__
    'MuonWithAdamW'

Direct use:

    >>> from hf_retain.optim import create_optimizer
    >>> opt = create_optimizer(build_tiny_model(num_hidden_layers=2), "muon", lr=0.02, adjust_lr_fn="original")
    >>> opt.param_groups[0]["adjust_lr_fn"], opt.param_groups[0]["momentum"]
    ('original', 0.95)
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch
from torch import nn
from transformers.optimization import Adafactor

from hf_retain.lineage.reader import LineageLookup, lookup_pretraining_optimizer
from hf_retain.optim.muon import MuonWithAdamW, split_params_for_muon
from hf_retain.optim.policy import (
    OPTIMIZER_NAMES,
    SUPPORTED_OPTIMIZERS,
    resolve_auto,
    same_family,
    trainer_optim_family,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OPTIMIZER_NAMES", "SUPPORTED_OPTIMIZERS", "OptimizerFactory", "create_optimizer", "lineage_family",
    "optimizer_cls_and_kwargs", "optimizer_hparams", "pretraining_optimizer_family", "resolve_auto", "same_family",
    "trainer_optim_family",
]

# Muon keywords beyond MuonWithAdamW's constructor: the AdamW half's own LR/decay and the LoRA opt-in.
_MUON_EXTRA = ("adamw_lr", "adamw_weight_decay", "muon_lora")


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if name == "adamw":
        return torch.optim.AdamW
    if name == "adam":
        return torch.optim.Adam
    if name == "sgd":
        return torch.optim.SGD
    if name == "adafactor":
        return Adafactor
    if name == "muon":
        return MuonWithAdamW
    raise _unknown(name)


def _unknown(name: Any) -> ValueError:
    return ValueError(f"Unknown optimizer {name!r}; valid names are {list(OPTIMIZER_NAMES)}.")


def optimizer_hparams(name: str) -> tuple[str, ...]:
    """The hyperparameter keywords ``name`` takes besides ``lr`` and ``weight_decay`` (from its signature)."""
    signature = inspect.signature(_optimizer_class(name).__init__)
    names = [p for p in signature.parameters if p not in ("self", "params", "lr", "weight_decay")]
    if name == "muon":
        names += list(_MUON_EXTRA)
    return tuple(sorted(names))


def _check_hparams(name: str, hparams: dict[str, Any]) -> None:
    unknown = sorted(set(hparams) - set(optimizer_hparams(name)))
    if unknown:
        raise ValueError(f"Optimizer {name!r} does not take {unknown}; it takes lr, weight_decay and "
                         f"{list(optimizer_hparams(name))}.")


def lineage_family(found: LineageLookup) -> tuple[str | None, str]:
    """``(canonical family or None, where it was read or why it was not)`` of a lineage lookup already made."""
    info = found.info
    name = (str(getattr(info, "name", "") or "").lower() or None) if info is not None else None
    if name is None:
        return None, "lineage reader: " + ("; ".join(found.notes[-2:]) if found.notes else "nothing found")
    return name, str(getattr(info, "source", "") or "lineage reader")


def pretraining_optimizer_family(model: Any) -> tuple[str | None, str]:
    """``(canonical family or None, where it came from)`` for ``model``: one lineage lookup; never raises.

    A trainer reads the lineage once per run (`RetentionMixin.pretraining_lineage`) and passes the lookup to
    `lineage_family`; this is for standalone use, such as ``create_optimizer(model, "auto")``.
    """
    try:
        found = lookup_pretraining_optimizer(model)
    except Exception as err:  # a reader failure must not stop a run that asked for a fallback
        logger.warning("hf_retain: reading the pretraining optimizer failed (%s: %s).", type(err).__name__, err)
        return None, f"the lineage reader failed ({type(err).__name__}: {err})"
    return lineage_family(found)


def _deepspeed_active(model: nn.Module) -> bool:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return True
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _grouped(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """transformers.Trainer's two groups: weight decay on everything but biases and norms."""
    split = split_params_for_muon(model)
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    decay = [p for p in params if names.get(id(p)) not in split.no_decay]
    no_decay = [p for p in params if names.get(id(p)) in split.no_decay]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def create_optimizer(model: nn.Module, name: str, *, lr: float, weight_decay: float = 0.0,
                     **hparams: Any) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` for ``model`` (see the module docstring for names and hyperparameters)."""
    if not isinstance(name, str) or name.strip().lower() not in OPTIMIZER_NAMES:
        raise _unknown(name)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
        raise ValueError(f"lr={lr!r} must be a number >= 0.")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be a number >= 0.")
    name = name.strip().lower()
    if name == "auto":
        fallback = hparams.pop("fallback", "adamw")
        if fallback not in SUPPORTED_OPTIMIZERS:
            raise ValueError(f"fallback={fallback!r} must be one of {list(SUPPORTED_OPTIMIZERS)}.")
        known = set().union(*(optimizer_hparams(n) for n in SUPPORTED_OPTIMIZERS))
        unknown = sorted(set(hparams) - known)
        if unknown:
            raise ValueError(f"No optimizer takes {unknown}; see hf_retain.optim.optimizer_hparams(name).")
        family, found = pretraining_optimizer_family(model)
        chosen, reason = resolve_auto(family, fallback, found=found)
        logger.info("hf_retain: %s", reason)
        dropped = sorted(set(hparams) - set(optimizer_hparams(chosen)))
        if dropped:
            logger.info("hf_retain: %s does not take %s; ignoring them.", chosen, dropped)
        kept = {k: v for k, v in hparams.items() if k not in dropped}
        return create_optimizer(model, chosen, lr=lr, weight_decay=weight_decay, **kept)

    _check_hparams(name, hparams)
    if name == "muon":
        optimizer = _create_muon(model, lr=lr, weight_decay=weight_decay, **hparams)
    else:
        if name == "adafactor":  # transformers.Trainer's optim="adafactor" settings: a fixed, external LR
            hparams = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **hparams}
        groups = _grouped(model, weight_decay)
        if not groups:
            raise ValueError("The model has no trainable parameters (all have requires_grad=False).")
        optimizer = _optimizer_class(name)(groups, lr=lr, **hparams)
    logger.info("hf_retain: optimizer %s (lr=%g, weight_decay=%g%s)", name, lr, weight_decay,
                "".join(f", {k}={v}" for k, v in sorted(hparams.items())))
    return optimizer


def _create_muon(model: nn.Module, *, lr: float, weight_decay: float, **hparams: Any) -> MuonWithAdamW:
    if _deepspeed_active(model):
        raise RuntimeError(
            "Muon under DeepSpeed must be DeepSpeed's native Muon: ZeRO hands a torch optimizer flattened 1-D "
            "partitions, on which Muon would silently become something else. Use RetentionTrainer (or "
            "OptimizerMixin) with RetentionConfig(optimizer='muon'), which routes there, or put "
            "hf_retain.optim.deepspeed_muon_config(...) into your DeepSpeed config."
        )
    adamw_lr = hparams.pop("adamw_lr", None)
    adamw_weight_decay = hparams.pop("adamw_weight_decay", None)
    muon_lora = bool(hparams.pop("muon_lora", False))
    if "eps" in hparams and "adamw_eps" not in hparams:
        hparams["adamw_eps"] = hparams["eps"]
    split = split_params_for_muon(model, muon_lora=muon_lora)
    if not split.muon:
        raise ValueError(
            "Muon needs 2-D hidden weight matrices, and this model has none trainable "
            f"({split.summary()}). Pick another optimizer (e.g. 'adamw'); with LoRA set muon_lora=True to train the "
            "adapter matrices with Muon; a model wrapped by FSDP1 has flat 1-D parameters: use FSDP2."
        )
    logger.info("hf_retain: %s", split.summary())
    three_d = [n for n, reason in split.reasons.items() if reason.startswith("3-D")]
    if three_d:
        logger.info("hf_retain: 3-D+ weights on AdamW (torch.optim.Muon is 2-D only): %s", three_d)
    groups = split.param_groups(adamw_lr=adamw_lr, adamw_weight_decay=adamw_weight_decay)
    return MuonWithAdamW(groups, lr=lr, weight_decay=weight_decay, **hparams)


class OptimizerFactory:
    """What `optimizer_cls_and_kwargs` hands a Trainer: transformers calls ``OptimizerFactory()(model, **kwargs)``
    (its protocol for optimizers that need the model, like Muon)."""

    def __call__(self, model: nn.Module, *, name: str, lr: float, weight_decay: float = 0.0,
                 **hparams: Any) -> torch.optim.Optimizer:
        return create_optimizer(model, name, lr=lr, weight_decay=weight_decay, **hparams)


def optimizer_cls_and_kwargs(name: str, *, lr: float, weight_decay: float = 0.0,
                             **hparams: Any) -> tuple[type, dict[str, Any]]:
    """``Trainer(optimizer_cls_and_kwargs=...)`` value building optimizer ``name`` (checked now, not at train).

    The Trainer then ignores ``args.learning_rate``/``args.weight_decay`` for the optimizer (its scheduler still
    applies), so pass them here.
    """
    if not isinstance(name, str) or name.strip().lower() not in OPTIMIZER_NAMES:
        raise _unknown(name)
    name = name.strip().lower()
    if name != "auto":
        _check_hparams(name, hparams)
    return OptimizerFactory, {"name": name, "lr": lr, "weight_decay": weight_decay, **hparams}
