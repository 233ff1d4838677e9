"""Elastic weight consolidation: Fisher estimation (`estimate_fisher`, `FisherState`) and the Trainer mixin
(`EWCMixin`) that adds lambda/2 * sum F (theta - theta*)^2 once per optimizer step, on one process or sharded.

Names load on first use, so estimating a Fisher does not import the Trainer mixin."""

from __future__ import annotations

from hf_retain._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "EWCMixin": "hf_retain.ewc.mixin",
    "EWCPenalty": "hf_retain.ewc.mixin",
    "FISHER_METHODS": "hf_retain.ewc.fisher",
    "FisherError": "hf_retain.errors",
    "FisherState": "hf_retain.ewc.fisher",
    "estimate_fisher": "hf_retain.ewc.fisher",
    "trainable_parameters": "hf_retain.ewc.fisher",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("hf_retain.ewc", _EXPORTS, globals())
