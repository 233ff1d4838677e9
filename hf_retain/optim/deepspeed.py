"""Muon under DeepSpeed ZeRO-1/2/3: DeepSpeed's native Muon, configured so hidden matrices really get Muon.

A torch optimizer under ZeRO sees flattened 1-D partitions, so a hand-made Muon there is either an error or,
worse, silently AdamW/SGD (hiyouga/LlamaFactory#8041, deepspeedai/DeepSpeed#8438). DeepSpeed (0.19.8 here) has
its own Muon: the config's ``optimizer.type: Muon``; `deepspeed.initialize` tags each parameter ``use_muon`` (2-D
and no ``embed``/``lm_head`` in its name) and ZeRO orthogonalises the *full* gradient of each tagged matrix before
its step.

Two ways in:

* Your own DeepSpeed config (plain `Trainer`): merge `deepspeed_muon_config(...)` into it. DeepSpeed's Muon then
  scales each matrix's update like torch's ``adjust_lr_fn="original"`` (sqrt(max(1, A/B))), so give Muon a Muon LR
  (e.g. 0.02) and AdamW its own ``adam_lr``.
* `OptimizerMixin` / `RetentionTrainer` with ``RetentionConfig(optimizer="muon")``: it writes that config section
  before DeepSpeed starts and passes per-shape param groups (`deepspeed_param_groups`), so DeepSpeed's updates
  follow the same LR rule as single-process Muon (default ``match_rms_adamw``) and the same weight decay.

What differs from torch.optim.Muon under DeepSpeed (DeepSpeed's own math): Newton-Schulz runs in DeepSpeed's
kernel (``ns_method="standard"``: the same quintic iteration in bf16, our default for parity; ``"gram"``: DeepSpeed's
faster Gram variant); Nesterov momentum is always on; 5 steps with the default coefficients. Asking for other
values is an error rather than a silent change.

Example:
    >>> from hf_retain.optim import deepspeed_muon_config
    >>> deepspeed_muon_config(lr=0.02, adam_lr=3e-4, weight_decay=0.01, zero_stage=3)["optimizer"]["type"]
    'Muon'
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any

from torch import nn

from hf_retain.optim.muon import (
    ADJUST_LR_FNS,
    DEFAULT_ADJUST_LR_FN,
    layer_shape,
    split_params_for_muon,
    torch_muon_function,
)

logger = logging.getLogger(__name__)

__all__ = ["deepspeed_muon_config", "deepspeed_param_groups", "deepspeed_muon_tags", "check_deepspeed_hparams",
           "DEEPSPEED_MUON_HPARAMS"]

# What the DeepSpeed route accepts from RetentionConfig.optimizer_kwargs (the rest of Muon's keywords must keep
# the values DeepSpeed hard-codes; see `check_deepspeed_hparams`).
DEEPSPEED_MUON_HPARAMS = ("momentum", "betas", "eps", "adamw_eps", "adamw_lr", "adamw_weight_decay",
                          "adjust_lr_fn", "ns_method", "nesterov", "ns_steps", "ns_coefficients", "muon_lora")
_FIXED = {"nesterov": True, "ns_steps": 5, "ns_coefficients": (3.4445, -4.7750, 2.0315)}


def deepspeed_muon_config(*, lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, adam_lr: float | None = None,
                          ns_method: str = "standard", zero_stage: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config entries for native Muon (+ AdamW for non-matrices), to merge into your config.

    ``zero_stage=3`` also turns off ``reduce_scatter``, which DeepSpeed's ZeRO-3 Muon requires (it gathers full
    gradients instead).
    """
    if ns_method not in ("standard", "gram"):
        raise ValueError(f"ns_method={ns_method!r} must be 'standard' or 'gram' (DeepSpeed's Newton-Schulz kernels).")
    params: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "betas": list(betas),
                              "eps": eps, "ns_method": ns_method}
    if adam_lr is not None:
        params["adam_lr"] = adam_lr
    config: dict[str, Any] = {"optimizer": {"type": "Muon", "params": params}}
    if zero_stage == 3:
        config["zero_optimization"] = {"reduce_scatter": False}
    return config


def check_deepspeed_hparams(hparams: dict[str, Any]) -> None:
    """Refuse Muon settings DeepSpeed's native Muon cannot honour (instead of silently changing them)."""
    unknown = sorted(set(hparams) - set(DEEPSPEED_MUON_HPARAMS))
    if unknown:
        raise ValueError(f"Muon under DeepSpeed does not take {unknown}; it takes {list(DEEPSPEED_MUON_HPARAMS)}.")
    for key, fixed in _FIXED.items():
        if key not in hparams:
            continue
        value = tuple(hparams[key]) if isinstance(fixed, tuple) else hparams[key]
        if value != fixed:
            raise ValueError(f"DeepSpeed's native Muon fixes {key}={fixed}; got {hparams[key]!r}. Remove it, or "
                             "train without DeepSpeed (DDP/FSDP2 use torch.optim.Muon's math with any value).")
    if hparams.get("adjust_lr_fn", DEFAULT_ADJUST_LR_FN) not in ADJUST_LR_FNS:
        raise ValueError(f"adjust_lr_fn={hparams['adjust_lr_fn']!r} must be one of {list(ADJUST_LR_FNS)}.")
    if hparams.get("ns_method", "standard") not in ("standard", "gram"):
        raise ValueError(f"ns_method={hparams['ns_method']!r} must be 'standard' or 'gram'.")


def deepspeed_muon_tags(model: nn.Module) -> dict[str, bool]:
    """``{name: use_muon}`` exactly as DeepSpeed will tag ``model`` (DeepSpeed's own `set_optimizer_flags`)."""
    import deepspeed

    deepspeed.set_optimizer_flags(SimpleNamespace(optimizer_name="muon", optimizer_params={}), model)
    return {name: bool(p.use_muon) for name, p in model.named_parameters()}


def _torch_scale(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch.optim.Muon's LR multiplier for a matrix of ``shape`` (its private ``_adjust_lr``, version-checked)."""
    return torch_muon_function("_adjust_lr")(1.0, adjust_lr_fn, shape)


def _deepspeed_scale(shape: tuple[int, ...]) -> float:
    """DeepSpeed's Muon multiplies each update by sqrt(max(1, rows/cols)) (its `_aspect_ratio_scale`)."""
    rows, cols = shape[-2], shape[-1]
    return math.sqrt(rows / cols) if rows > cols else 1.0


def deepspeed_param_groups(model: nn.Module, *, lr: float, weight_decay: float, momentum: float = 0.95,
                           adjust_lr_fn: str | None = DEFAULT_ADJUST_LR_FN, adamw_lr: float | None = None,
                           adamw_weight_decay: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                           adamw_eps: float = 1e-8, ns_method: str = "standard",
                           muon_lora: bool = False) -> list[dict[str, Any]]:
    """Param groups for DeepSpeed's Muon that reproduce torch.optim.Muon's LR and weight-decay rule.

    Which parameters get Muon is DeepSpeed's decision (its tags); we group Muon matrices by shape and give each
    group ``lr * torch_scale / deepspeed_scale`` and a weight decay that keeps ``lr * weight_decay`` as torch has
    it. Where DeepSpeed's tags differ from `split_params_for_muon` (e.g. LoRA factors, a head not named
    ``lm_head``) we log a warning naming the parameters.
    """
    tags = deepspeed_muon_tags(model)
    ours = split_params_for_muon(model, muon_lora=muon_lora)
    ours_muon = set(ours.muon_names)
    differ = sorted(n for n, p in model.named_parameters() if p.requires_grad and tags[n] != (n in ours_muon))
    if differ:
        logger.warning(
            "hf_retain: DeepSpeed's native Muon chooses Muon/AdamW by shape and name, and for %d parameters it "
            "differs from hf_retain's split (DeepSpeed's choice applies): %s", len(differ),
            {n: "Muon" if tags[n] else "AdamW" for n in differ[:20]})
    if not any(tags[n] for n, p in model.named_parameters() if p.requires_grad):
        raise ValueError("DeepSpeed's Muon would find no 2-D hidden matrix to train in this model; pick another "
                         "optimizer (e.g. 'adamw').")
    by_shape: dict[tuple[int, ...], list[nn.Parameter]] = {}
    adam_decay, adam_no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if tags[name]:
            by_shape.setdefault(layer_shape(p), []).append(p)
        elif name in ours.no_decay:
            adam_no_decay.append(p)
        else:
            adam_decay.append(p)
    groups: list[dict[str, Any]] = []
    a_lr = lr if adamw_lr is None else adamw_lr
    a_wd = weight_decay if adamw_weight_decay is None else adamw_weight_decay
    # AdamW groups first: the Trainer logs the first group's LR, which then reads as args.learning_rate.
    for params, wd, name in ((adam_decay, a_wd, "adamw"), (adam_no_decay, 0.0, "adamw_no_decay")):
        if params:
            groups.append({"params": params, "lr": a_lr, "weight_decay": wd, "betas": tuple(betas), "eps": adamw_eps,
                           "name": name})
    for shape, params in sorted(by_shape.items()):
        group_lr = lr * _torch_scale(adjust_lr_fn, shape) / _deepspeed_scale(shape)
        group_wd = weight_decay * lr / group_lr if group_lr > 0 else 0.0
        groups.append({"params": params, "lr": group_lr, "weight_decay": group_wd, "momentum": momentum,
                       "ns_method": ns_method, "name": f"muon_{'x'.join(map(str, shape))}"})
    return groups
