"""Elastic weight consolidation: Fisher estimation (`estimate_fisher`, `FisherState`) and the Trainer mixin
(`EWCMixin`) that adds lambda/2 * sum F (theta - theta*)^2 once per optimizer step, on one process or sharded."""

from hf_retain.ewc.fisher import FISHER_METHODS, FisherError, FisherState, estimate_fisher, trainable_parameters

__all__ = ["FISHER_METHODS", "EWCMixin", "FisherError", "FisherState", "estimate_fisher", "trainable_parameters"]


def __getattr__(name: str):
    # The mixin imports transformers' Trainer machinery; load it only when asked for.
    if name == "EWCMixin":
        from hf_retain.ewc.mixin import EWCMixin

        return EWCMixin
    raise AttributeError(f"module 'hf_retain.ewc' has no attribute {name!r}")
