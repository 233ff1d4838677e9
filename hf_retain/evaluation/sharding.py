"""FSDP2 (``fully_shard``) awareness for code that runs forward passes outside training.

An evaluation forward without a backward leaves the FSDP2 root's parameters gathered as plain tensors; the suite
reshards after evaluating, and the regression guard uses the same check to know that a model's weights live in
shards (a snapshot must then be gathered, and a restore must write into the shards).

Example:
    >>> import torch
    >>> fsdp2_modules(torch.nn.Linear(2, 2))
    []
"""

from __future__ import annotations

from typing import Any

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - a torch build without distributed support has no FSDP2
    FSDPModule = None

__all__ = ["fsdp2_modules", "reshard_fsdp2"]


def fsdp2_modules(model: Any) -> list[Any]:
    """The FSDP2 modules inside ``model``; empty for anything else (including objects that are not modules)."""
    modules = getattr(model, "modules", None)
    if FSDPModule is None or modules is None:
        return []
    return [m for m in modules() if isinstance(m, FSDPModule)]


def reshard_fsdp2(model: Any) -> None:
    """Return FSDP2 parameters to their shards: frees the gathered copy an evaluation forward leaves behind and
    makes the DTensor shards current again."""
    for module in fsdp2_modules(model):
        module.reshard()
