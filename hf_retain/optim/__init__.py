"""Optimizers: Muon for Hugging Face models (one process to DeepSpeed) and "same optimizer as pretraining".

* `create_optimizer(model, name, *, lr, weight_decay=0.0, **hparams)`: ``adamw``, ``adam``, ``adafactor``, ``sgd``,
  ``muon`` (`MuonWithAdamW`: torch.optim.Muon's math on hidden matrices, AdamW on the rest) or ``auto``.
* `optimizer_cls_and_kwargs(...)`: the same for a plain `Trainer`/`SFTTrainer`.
* `OptimizerMixin`: `RetentionConfig.optimizer` and mismatch mitigation inside any Trainer, DeepSpeed included.
* `deepspeed_muon_config(...)`: the DeepSpeed config section for its native Muon.

Example:
    >>> from hf_retain import build_tiny_model
    >>> from hf_retain.optim import create_optimizer
    >>> opt = create_optimizer(build_tiny_model(num_hidden_layers=2), "muon", lr=1e-3, weight_decay=0.01)
    >>> [(g["name"], g["use_muon"]) for g in opt.param_groups]
    [('muon', True), ('adamw', False), ('adamw_no_decay', False)]
"""

from hf_retain.optim.deepspeed import deepspeed_muon_config, deepspeed_param_groups
from hf_retain.optim.factory import (
    OPTIMIZER_NAMES,
    SUPPORTED_OPTIMIZERS,
    OptimizerFactory,
    create_optimizer,
    optimizer_cls_and_kwargs,
    optimizer_hparams,
    resolve_auto,
    same_family,
)
from hf_retain.optim.mixin import OptimizerMixin
from hf_retain.optim.muon import MuonSplit, MuonWithAdamW, split_params_for_muon

__all__ = [
    "OPTIMIZER_NAMES", "SUPPORTED_OPTIMIZERS", "MuonSplit", "MuonWithAdamW", "OptimizerFactory", "OptimizerMixin",
    "create_optimizer", "deepspeed_muon_config", "deepspeed_param_groups", "optimizer_cls_and_kwargs",
    "optimizer_hparams", "resolve_auto", "same_family", "split_params_for_muon",
]
