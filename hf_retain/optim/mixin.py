"""`OptimizerMixin`: `RetentionConfig.optimizer` (``muon``, ``auto``, ...) and mismatch mitigation in any Trainer.

It overrides `Trainer.create_optimizer`, so transformers' scheduler, gradient clipping, checkpointing and resume
apply unchanged. With ``RetentionConfig(optimizer=None, mismatch_mitigation=False)`` (the defaults) it does
nothing at all: the Trainer builds its own optimizer from ``args.optim``.

* ``optimizer``: ``adamw``/``adam``/``adafactor``/``sgd``/``muon`` via `hf_retain.optim.create_optimizer` with
  ``args.learning_rate``, ``args.weight_decay`` (and ``args.adam_beta1/2``, ``args.adam_epsilon`` for the Adam
  family and Muon's AdamW half) plus ``optimizer_kwargs``; ``auto`` = the pretraining optimizer the lineage reader
  finds, else the Trainer's own ``args.optim`` (logged with the reason). The lineage is the run's one lookup
  (`RetentionMixin.pretraining_lineage`), shared with the consistency and lineage callbacks.
* Under DeepSpeed, ``muon`` becomes DeepSpeed's native Muon (`hf_retain.optim.deepspeed`): the config section is
  written before DeepSpeed starts; a DeepSpeed config that already names an optimizer is an error.
* ``mismatch_mitigation``: when the fine-tune optimizer's family differs from the pretraining one, LR and weight
  decay are multiplied by ``mismatch_lr_scale``/``mismatch_wd_scale`` (all param groups, incl. ``adamw_lr``).

Families, ``auto`` and the scaling are `hf_retain.optim.policy`'s, the same that `OptimizerConsistencyCallback`
uses, so the two always agree on whether a run switches optimizer.

What was chosen, why, and with which hyperparameters is logged and kept in ``trainer.optimizer_choice`` (also
written as ``optimizer_choice.json`` into each checkpoint), for lineage and reports.

Example:
    >>> from transformers import Trainer, TrainingArguments
    >>> from hf_retain import RetentionConfig, build_tiny_model
    >>> from hf_retain.optim import OptimizerMixin
    >>> class MuonTrainer(OptimizerMixin, Trainer): ...
    >>> trainer = MuonTrainer(model=build_tiny_model(num_hidden_layers=2),
    ...                       args=TrainingArguments("/tmp/muon_mixin_doc", use_cpu=True, report_to=[]),
    ...                       retention=RetentionConfig(optimizer="muon", optimizer_kwargs={"momentum": 0.9}))
    >>> type(trainer.create_optimizer()).__name__, trainer.optimizer_choice["optimizer"]
    ('MuonWithAdamW', 'muon')
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from hf_retain.distributed import broadcast_object, is_distributed, rank
from hf_retain.errors import ConfigError
from hf_retain.lineage.reader import LineageLookup
from hf_retain.mixin import RetentionMixin
from hf_retain.optim.deepspeed import check_deepspeed_hparams, deepspeed_muon_config, deepspeed_param_groups
from hf_retain.optim.factory import create_optimizer, lineage_family, optimizer_hparams
from hf_retain.optim.muon import split_params_for_muon
from hf_retain.optim.policy import (
    OPTIMIZER_NAMES,
    SUPPORTED_OPTIMIZERS,
    apply_mitigation,
    consistency_status,
    mitigation_scales,
    resolve_auto,
    trainer_optim_family,
)
from hf_retain.state import read_json_state, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["OptimizerMixin", "OPTIMIZER_CHOICE_FILE"]

OPTIMIZER_CHOICE_FILE = "optimizer_choice.json"


def _is_dummy_optim(optimizer: Any) -> bool:
    """Whether DeepSpeed will build the optimizer from its config (accelerate's placeholder; DeepSpeed runs only)."""
    from accelerate.utils import DummyOptim  # optional dependency: importable only where DeepSpeed is installed

    return isinstance(optimizer, DummyOptim)


def _allowed_hparams(name: str) -> tuple[str, ...]:
    """``optimizer_hparams(name)``, plus DeepSpeed's ``ns_method`` for Muon (used only under DeepSpeed)."""
    return (*optimizer_hparams(name), "ns_method") if name == "muon" else optimizer_hparams(name)


class OptimizerMixin(RetentionMixin):
    """Builds the optimizer `RetentionConfig.optimizer` names; see the module docstring."""

    optimizer_choice: dict[str, Any] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer_choice = None
        self._optimizer_plan: dict[str, Any] | None = None
        self._deepspeed_muon = False
        self._plan_name: str | None = None
        self._plan_hparams: dict[str, Any] = {}
        requested = self.retention.optimizer
        if requested is None:
            return
        if requested not in OPTIMIZER_NAMES:
            raise ConfigError(f"RetentionConfig.optimizer={requested!r} is not an optimizer hf_retain provides; "
                              f"choose one of {list(OPTIMIZER_NAMES)} or None (the Trainer's own).")
        if self.optimizer is not None:  # type: ignore[attr-defined]
            raise ConfigError("The Trainer was given `optimizers=(optimizer, ...)` and RetentionConfig.optimizer="
                              f"{requested!r}; keep one of them.")
        if getattr(self, "optimizer_cls_and_kwargs", None) is not None:
            raise ConfigError("The Trainer was given `optimizer_cls_and_kwargs` and RetentionConfig.optimizer="
                              f"{requested!r}; keep one of them.")
        extra = dict(self.retention.optimizer_kwargs or {})
        if requested == "auto":
            known = set().union(*(_allowed_hparams(n) for n in SUPPORTED_OPTIMIZERS))
            unknown = sorted(set(extra) - known)
            if unknown:
                raise ConfigError(f"RetentionConfig.optimizer_kwargs has {unknown}, which no optimizer takes.")
        else:
            allowed = _allowed_hparams(requested)
            unknown = sorted(set(extra) - set(allowed))
            if unknown:
                raise ConfigError(f"RetentionConfig.optimizer_kwargs has {unknown}, which optimizer {requested!r} "
                                  f"does not take; it takes {list(allowed)}.")
        if requested == "muon":
            split = split_params_for_muon(self.model, muon_lora=bool(extra.get("muon_lora", False)))  # type: ignore[attr-defined]
            if not split.muon:
                raise ConfigError(
                    f"RetentionConfig.optimizer='muon' needs 2-D hidden weight matrices to train, and this model has "
                    f"none trainable ({split.summary()}). Choose another optimizer, or for LoRA adapters set "
                    "optimizer_kwargs={'muon_lora': True}."
                )

    # ---- the decision ------------------------------------------------------------------------------------------
    def _active(self) -> bool:
        return self.retention.optimizer is not None or self.retention.mismatch_mitigation

    def _plan_optimizer(self) -> dict[str, Any]:
        """Resolve name, LR, weight decay and hyperparameters once: decided on rank 0 (one log) and broadcast, so
        every rank builds the same optimizer. The pretraining lineage is the run's one lookup, shared."""
        if self._optimizer_plan is not None:
            return self._optimizer_plan
        found = self.pretraining_lineage()  # on every rank: it broadcasts
        decided: tuple[Any, ...] | None = None
        if rank() == 0:
            try:
                decided = ("ok", *self._decide_optimizer(found))
            except Exception as err:  # tell the other ranks instead of leaving them waiting in the broadcast
                decided = ("error", f"{type(err).__name__}: {err}")
                if not is_distributed():
                    raise
        decided = broadcast_object(decided)
        if decided[0] == "error":
            raise RuntimeError(f"hf_retain: rank 0 could not decide the optimizer: {decided[1]}")
        _, self._optimizer_plan, self._plan_name, self._plan_hparams = decided
        self.optimizer_choice = dict(self._optimizer_plan)
        return self._optimizer_plan

    def _decide_optimizer(self, found: LineageLookup) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
        """The plan for this run given the pretraining lineage ``found`` (`hf_retain.optim.policy` decides)."""
        retention, args = self.retention, self.args  # type: ignore[attr-defined]
        requested = retention.optimizer
        hparams = dict(retention.optimizer_kwargs or {})
        pretrain, where = lineage_family(found)
        trainer_optim = getattr(args.optim, "value", args.optim)
        name, source = requested, "RetentionConfig.optimizer"
        if requested is None:
            source = f"TrainingArguments.optim={trainer_optim}"
        elif requested == "auto":
            name, source = resolve_auto(pretrain, None, found=where)
            if name is None:
                source = f"auto fell back to TrainingArguments.optim={trainer_optim}: {source}"
                logger.warning("hf_retain: optimizer %s", source)
        family = name if name is not None else trainer_optim_family(args.optim)
        if name is not None:
            dropped = sorted(set(hparams) - set(_allowed_hparams(name)))
            if dropped:
                logger.info("hf_retain: %s does not take optimizer_kwargs %s; ignoring them.", name, dropped)
            hparams = {k: v for k, v in hparams.items() if k not in dropped}
            if name in ("adamw", "adam", "muon"):
                hparams.setdefault("betas", (args.adam_beta1, args.adam_beta2))
            if name in ("adamw", "adam"):
                hparams.setdefault("eps", args.adam_epsilon)
            if name == "muon" and "eps" not in hparams:
                hparams.setdefault("adamw_eps", args.adam_epsilon)
        elif hparams:
            logger.info("hf_retain: optimizer_kwargs %s unused: the Trainer builds its own optimizer.", sorted(hparams))
            hparams = {}
        status = consistency_status(family, pretrain)
        scaled = bool(retention.mismatch_mitigation and status == "mismatch")
        lr_scale, wd_scale = mitigation_scales(scaled, retention.mismatch_lr_scale, retention.mismatch_wd_scale)
        lr, weight_decay = float(args.learning_rate) * lr_scale, float(args.weight_decay) * wd_scale
        if scaled:
            logger.warning("hf_retain: optimizer mismatch (fine-tune %s, pretrained with %s): mismatch_mitigation "
                           "scales LR by %g and weight decay by %g -> lr=%g, weight_decay=%g.", family, pretrain,
                           lr_scale, wd_scale, lr, weight_decay)
        elif retention.mismatch_mitigation:
            logger.info("hf_retain: mismatch_mitigation on, no scaling: %s.",
                        f"fine-tune {family} matches pretraining {pretrain}" if pretrain else where)
        plan = {
            "requested": requested, "optimizer": family, "built_by": "hf_retain" if name else "trainer",
            "source": source, "lr": lr, "weight_decay": weight_decay,
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()},
            "pretraining_optimizer": pretrain, "pretraining_source": where, "status": status,
            "mismatch": status == "mismatch", "mitigation_applied": scaled, "lr_scale": lr_scale,
            "wd_scale": wd_scale,
        }
        logger.info("hf_retain: optimizer choice %s", json.dumps(plan, default=str))
        return plan, name, hparams

    def _mitigate(self, groups: Any) -> None:
        """Apply the plan's mismatch scaling to freshly built param groups (`hf_retain.optim.policy`)."""
        plan = self._optimizer_plan or {}
        if plan.get("mitigation_applied"):
            apply_mitigation(groups, plan["lr_scale"], plan["wd_scale"])

    # ---- Trainer hooks -----------------------------------------------------------------------------------------
    def create_optimizer(self, model: Any = None):
        if not self._active():
            return super().create_optimizer(model)  # type: ignore[misc]
        if getattr(self, "is_deepspeed_enabled", False) and _is_dummy_optim(self.optimizer):  # type: ignore[attr-defined]
            # DeepSpeed builds the optimizer from its config; give it our param groups (LR rule, no-decay split).
            if self._deepspeed_muon and not getattr(self.optimizer, "_hf_retain_groups", False):
                self._fill_deepspeed_groups(self.optimizer, self.model if model is None else model)  # type: ignore[attr-defined]
            return self.optimizer  # type: ignore[attr-defined]
        if self.optimizer is not None:  # type: ignore[attr-defined]
            return super().create_optimizer(model)  # type: ignore[misc]
        opt_model = self.model if model is None else model  # type: ignore[attr-defined]
        self._plan_optimizer()
        if self._plan_name is None:
            optimizer = super().create_optimizer(model)  # type: ignore[misc]
        else:
            args = self.args  # type: ignore[attr-defined]
            hparams = {k: v for k, v in self._plan_hparams.items() if k != "ns_method"}  # ns_method: DeepSpeed only
            optimizer = self.optimizer = create_optimizer(
                opt_model, self._plan_name, lr=float(args.learning_rate), weight_decay=float(args.weight_decay),
                **hparams)
        self._mitigate(optimizer.param_groups)  # before the Trainer builds its scheduler on these LRs
        return optimizer

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if self._active() and getattr(self, "is_deepspeed_enabled", False):
            self._configure_deepspeed_optimizer()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def save_retention_state(self, checkpoint_dir: str) -> None:
        super().save_retention_state(checkpoint_dir)
        if self.optimizer_choice is not None and self.is_world_process_zero():  # type: ignore[attr-defined]
            write_json_atomic(os.path.join(checkpoint_dir, OPTIMIZER_CHOICE_FILE), self.optimizer_choice, indent=2,
                              default=str)

    def load_retention_state(self, checkpoint_dir: str) -> None:
        super().load_retention_state(checkpoint_dir)
        path = os.path.join(checkpoint_dir, OPTIMIZER_CHOICE_FILE)
        if self._active() and os.path.isfile(path):
            saved = read_json_state(path, what="optimizer choice", how_to_skip=(
                f"Delete {OPTIMIZER_CHOICE_FILE} from the checkpoint to resume without the check that this run "
                "builds the optimizer the checkpoint was trained with."))
            plan = self._plan_optimizer()
            if saved.get("optimizer") != plan["optimizer"]:
                raise ConfigError(f"Checkpoint {checkpoint_dir} was trained with optimizer {saved.get('optimizer')!r}"
                                  f" and this run resolves to {plan['optimizer']!r}; its optimizer state cannot be "
                                  "resumed. Set RetentionConfig.optimizer to the checkpoint's optimizer.")

    # ---- DeepSpeed ---------------------------------------------------------------------------------------------
    def _configure_deepspeed_optimizer(self) -> None:
        plugin = self.accelerator.state.deepspeed_plugin  # type: ignore[attr-defined]
        config = plugin.hf_ds_config.config
        plan = self._plan_optimizer()
        if "optimizer" in config and not self._deepspeed_muon:
            if self._plan_name is not None:
                raise ConfigError(
                    f"The DeepSpeed config names an optimizer ({config['optimizer'].get('type')!r}) and "
                    f"RetentionConfig.optimizer={self.retention.optimizer!r} asks for {self._plan_name!r}. Remove the "
                    "'optimizer' section from the DeepSpeed config, or set RetentionConfig.optimizer=None."
                )
            if plan["mitigation_applied"]:
                raise ConfigError("mismatch_mitigation cannot scale the LR of an optimizer defined in the DeepSpeed "
                                  "config; remove its 'optimizer' section or scale its lr yourself and turn "
                                  "mismatch_mitigation off.")
            return
        if self._plan_name != "muon":
            return  # DeepSpeed runs hf_retain's torch optimizer (create_optimizer) as its client optimizer
        check_deepspeed_hparams(self._plan_hparams)
        args = self.args  # type: ignore[attr-defined]
        # Config-level values equal the TrainingArguments (HF checks they match); the real ones are per group.
        section = deepspeed_muon_config(
            lr=args.learning_rate, weight_decay=args.weight_decay, momentum=self._plan_hparams.get("momentum", 0.95),
            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
            ns_method=self._plan_hparams.get("ns_method", "standard"), zero_stage=plugin.zero_stage,
        )
        targets = [config] if plugin.deepspeed_config is config else [config, plugin.deepspeed_config]
        for target in targets:
            target["optimizer"] = section["optimizer"]
            if "zero_optimization" in section:
                target.setdefault("zero_optimization", {}).update(section["zero_optimization"])
        self._deepspeed_muon = True
        logger.info("hf_retain: DeepSpeed ZeRO-%s: using DeepSpeed's native Muon (optimizer.type=Muon%s).",
                    plugin.zero_stage, ", reduce_scatter=false" if plugin.zero_stage == 3 else "")

    def _fill_deepspeed_groups(self, dummy: Any, model: Any) -> None:
        self._plan_optimizer()
        args, hp = self.args, self._plan_hparams  # type: ignore[attr-defined]
        groups = deepspeed_param_groups(
            model, lr=float(args.learning_rate), weight_decay=float(args.weight_decay),
            momentum=hp.get("momentum", 0.95),
            adjust_lr_fn=hp.get("adjust_lr_fn", "match_rms_adamw"), adamw_lr=hp.get("adamw_lr"),
            adamw_weight_decay=hp.get("adamw_weight_decay"), betas=tuple(hp.get("betas", (0.9, 0.999))),
            adamw_eps=hp.get("adamw_eps", hp.get("eps", 1e-8)), ns_method=hp.get("ns_method", "standard"),
            muon_lora=bool(hp.get("muon_lora", False)),
        )
        self._mitigate(groups)
        dummy.params = groups
        dummy._hf_retain_groups = True
        logger.info("hf_retain: DeepSpeed Muon param groups: %s",
                    [(g["name"], len(g["params"]), round(g["lr"], 8)) for g in groups])
