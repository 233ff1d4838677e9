"""Optimizers: Muon for Hugging Face models (one process to DeepSpeed) and "same optimizer as pretraining".

* `create_optimizer(model, name, *, lr, weight_decay=0.0, **hparams)`: ``adamw``, ``adam``, ``adafactor``, ``sgd``,
  ``muon`` (`MuonWithAdamW`: torch.optim.Muon's math on hidden matrices, AdamW on the rest) or ``auto``.
* `optimizer_cls_and_kwargs(...)`: the same for a plain `Trainer`/`SFTTrainer`.
* `OptimizerMixin`: `RetentionConfig.optimizer` and mismatch mitigation inside any Trainer, DeepSpeed included.
* `deepspeed_muon_config(...)`: the DeepSpeed config section for its native Muon.
* `hf_retain.optim.policy`: what optimizer names mean (families), ``auto`` and mismatch mitigation, for all of them.

Names load on first use, so `hf_retain.optim.policy` (which `RetentionConfig` validates with) imports no torch.

Example:
    >>> from hf_retain import build_tiny_model
    >>> from hf_retain.optim import create_optimizer
    >>> opt = create_optimizer(build_tiny_model(num_hidden_layers=2), "muon", lr=1e-3, weight_decay=0.01)
    >>> [(g["name"], g["use_muon"]) for g in opt.param_groups]
    [('muon', True), ('adamw', False), ('adamw_no_decay', False)]
"""

from __future__ import annotations

from hf_retain._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "OPTIMIZER_NAMES": "hf_retain.optim.policy",
    "SUPPORTED_OPTIMIZERS": "hf_retain.optim.policy",
    "apply_mitigation": "hf_retain.optim.policy",
    "canonical_optimizer_name": "hf_retain.optim.policy",
    "consistency_status": "hf_retain.optim.policy",
    "mitigation_scales": "hf_retain.optim.policy",
    "resolve_auto": "hf_retain.optim.policy",
    "same_family": "hf_retain.optim.policy",
    "trainer_optim_family": "hf_retain.optim.policy",
    "OptimizerFactory": "hf_retain.optim.factory",
    "create_optimizer": "hf_retain.optim.factory",
    "optimizer_cls_and_kwargs": "hf_retain.optim.factory",
    "optimizer_hparams": "hf_retain.optim.factory",
    "pretraining_optimizer_family": "hf_retain.optim.factory",
    "OptimizerMixin": "hf_retain.optim.mixin",
    "MuonSplit": "hf_retain.optim.muon",
    "MuonWithAdamW": "hf_retain.optim.muon",
    "split_params_for_muon": "hf_retain.optim.muon",
    "deepspeed_muon_config": "hf_retain.optim.deepspeed",
    "deepspeed_param_groups": "hf_retain.optim.deepspeed",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("hf_retain.optim", _EXPORTS, globals())
