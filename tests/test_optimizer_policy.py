"""One optimizer policy: every optimizer name folds into one family, and OptimizerMixin's decision and
OptimizerConsistencyCallback's status agree on every (fine-tune, pretraining) pair; a run looks the lineage up once."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import Trainer, TrainingArguments
from transformers.training_args import OptimizerNames

from hf_retain import build_tiny_model
from hf_retain.callbacks.consistency import OptimizerConsistencyCallback, OptimizerMismatchWarning
from hf_retain.callbacks.lineage import LineageCallback
from hf_retain.config import ConfigError, RetentionConfig
from hf_retain.lineage import LineageLookup, OptimizerInfo, load_registry
from hf_retain.optim import OptimizerMixin, create_optimizer
from hf_retain.optim.policy import (
    KNOWN_FAMILIES,
    OPTIMIZER_NAMES,
    SUPPORTED_OPTIMIZERS,
    apply_mitigation,
    canonical_optimizer_name,
    consistency_status,
    mitigation_scales,
    resolve_auto,
    same_family,
    trainer_optim_family,
)
from hf_retain.trainer import RetentionTrainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ALL_OPTIM = [member.value for member in OptimizerNames]

# The families chosen for transformers' optimizers whose names mix two families or none of ours (module doc of
# hf_retain.optim.policy): memory-saving variants fold to their base, different updates keep their own family.
ODD_FAMILIES = {
    "adamw_torch_4bit": "adamw", "adamw_torch_8bit": "adamw", "adamw_anyprecision": "adamw",
    "adamw_torch_npu_fused": "adamw", "adamw_torch_xla": "adamw", "stable_adamw": "adamw",
    "paged_adamw_8bit": "adamw", "paged_lion_8bit": "lion", "paged_ademamix_32bit": "ademamix",
    "rmsprop_bnb_32bit": "rmsprop",
    "galore_adamw": "galore", "galore_adafactor": "galore", "galore_adamw_8bit_layerwise": "galore",
    "apollo_adamw": "apollo", "apollo_adamw_layerwise": "apollo",
    "lomo": "lomo", "adalomo": "adalomo", "grokadamw": "other:grokadamw",
    "schedule_free_adamw": "other:schedule_free_adamw", "schedule_free_sgd": "other:schedule_free_sgd",
    "schedule_free_radam": "other:schedule_free_radam",
}

# Class names transformers builds for an optim value (transformers/trainer_optimizer.py), mostly from packages not
# installed here: the callback reads the class of the optimizer instance, the mixin reads args.optim.
CLASS_OF_OPTIM = {
    "adamw_torch_npu_fused": "NpuFusedAdamW", "adamw_anyprecision": "AnyPrecisionAdamW",
    "adamw_torch_4bit": "AdamW4bit", "adamw_torch_8bit": "AdamW8bit", "adamw_bnb_8bit": "AdamW",
    "paged_lion_8bit": "Lion", "ademamix_8bit": "AdEMAMix", "rmsprop_bnb": "RMSprop",
    "galore_adamw": "GaLoreAdamW", "galore_adamw_8bit": "GaLoreAdamW8bit", "galore_adafactor": "GaLoreAdafactor",
    "apollo_adamw": "APOLLOAdamW", "lomo": "Lomo", "adalomo": "AdaLomo", "grokadamw": "GrokAdamW",
    "schedule_free_adamw": "AdamWScheduleFree", "schedule_free_sgd": "SGDScheduleFree",
    "schedule_free_radam": "RAdamScheduleFree", "stable_adamw": "StableAdamW",
}


def _registry_names() -> set[str]:
    names = set()
    for entry in load_registry():
        names.update(n for n in (entry.optimizer, entry.variant) if n)
    return names


FAMILIES = {trainer_optim_family(o) for o in ALL_OPTIM} | {canonical_optimizer_name(n) for n in _registry_names()}
PRETRAINED: list[str | None] = [*sorted(FAMILIES | set(SUPPORTED_OPTIMIZERS)), None]


# ---- names and families -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("optim", ALL_OPTIM)
def test_every_trainer_optimizer_name_has_one_family(optim):
    member = OptimizerNames(optim)
    family = trainer_optim_family(member)
    assert family == trainer_optim_family(optim) == canonical_optimizer_name(optim)
    assert canonical_optimizer_name(f"OptimizerNames.{member.name}") == family
    assert canonical_optimizer_name(family) == family  # families are fixed points
    assert family in KNOWN_FAMILIES or family.startswith("other:")
    assert family == ODD_FAMILIES.get(optim, family)
    if optim in CLASS_OF_OPTIM:  # the instance's class name reads as the same family
        assert canonical_optimizer_name(CLASS_OF_OPTIM[optim]) == family, CLASS_OF_OPTIM[optim]


def test_registry_names_are_families_and_variants_fold_into_them():
    for entry in load_registry():
        if entry.optimizer is None:
            continue
        assert canonical_optimizer_name(entry.optimizer) == entry.optimizer
        if entry.variant:
            assert canonical_optimizer_name(entry.variant) == entry.optimizer, entry.family
    assert {"adamw", "adam", "adafactor", "lamb", "muon"} <= {canonical_optimizer_name(n) for n in _registry_names()}


def test_names_we_build_are_their_own_families_and_old_paths_still_import():
    import hf_retain
    from hf_retain.lineage.info import canonical_optimizer_name as lineage_canonical
    from hf_retain.lineage.info import same_family as lineage_same_family
    from hf_retain.optim.factory import same_family as factory_same_family
    from hf_retain.optim.factory import trainer_optim_family as factory_family

    assert (*SUPPORTED_OPTIMIZERS, "auto") == OPTIMIZER_NAMES
    assert all(canonical_optimizer_name(name) == name for name in SUPPORTED_OPTIMIZERS)
    assert hf_retain.canonical_optimizer_name is lineage_canonical is canonical_optimizer_name
    assert lineage_same_family is factory_same_family is same_family and factory_family is trainer_optim_family
    assert RetentionConfig(optimizer="Muon").optimizer == "muon"
    with pytest.raises(ConfigError, match=r"choose one of \['adamw', 'adam', 'adafactor', 'sgd', 'muon', 'auto'\]"):
        RetentionConfig(optimizer="galore_adamw")


def test_same_family_status_and_auto_are_pure_functions_of_families():
    assert same_family("adam", "adamw") and not same_family("muon", "adamw") and not same_family(None, None)
    assert [consistency_status(f, p) for f, p in (("adamw", "adam"), ("sgd", "lion"), (None, "muon"),
                                                   ("muon", None))] == ["match", "mismatch", "unknown", "unknown"]
    assert resolve_auto("adam", "sgd")[0] == "adam"
    name, reason = resolve_auto("galore", "sgd", found="model card")
    assert name == "sgd" and "fallback" in reason and "'galore' (model card)" in reason
    assert resolve_auto(None, None) == (None, "auto -> the Trainer's own optimizer (fallback): found no pretraining "
                                              "optimizer for this model")


def test_one_mitigation_for_groups_hyperparameters_and_scheduler():
    assert mitigation_scales("mismatch", 0.5, 0.25) == mitigation_scales(True, 0.5, 0.25) == (0.5, 0.25)
    assert mitigation_scales("match", 0.5, 0.25) == mitigation_scales("unknown") == (1.0, 1.0)
    with pytest.raises(ConfigError, match=r"mismatch_lr_scale=0 must be a number in \(0, 1\]"):
        mitigation_scales("mismatch", 0, 0.5)
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [param], "weight_decay": 0.1}], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    opt.param_groups[0].update(adamw_lr=2e-3, adamw_weight_decay=0.2, use_muon=True)
    assert apply_mitigation(opt.param_groups, 0.5, 0.25, scheduler=sched) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["adamw_lr"]) == (5e-4, 5e-4, 1e-3)
    assert (group["weight_decay"], group["adamw_weight_decay"], group["use_muon"]) == (0.025, 0.05, True)
    sched.step()
    assert opt.param_groups[0]["lr"] == 5e-4  # the scheduler keeps the scaled LR


# ---- the mixin and the callback agree -------------------------------------------------------------------------
class _OptTrainer(OptimizerMixin, Trainer):
    pass


def _lookup(family: str | None) -> LineageLookup:
    return LineageLookup(info=OptimizerInfo(name=family, source="test") if family else None,
                         notes=[] if family else ["test: unknown"])


@functools.cache
def _model() -> torch.nn.Module:
    return build_tiny_model(num_hidden_layers=1)


@functools.cache
def _instance(built_by: str, name: str) -> torch.optim.Optimizer | None:
    """The optimizer the plan builds: hf_retain's, or the Trainer's own for ``args.optim=name`` (None where that
    needs a package not installed here; the callback then reads ``args.optim``)."""
    if built_by == "hf_retain":
        return create_optimizer(_model(), name, lr=1e-3)
    args = TrainingArguments("/tmp/hf_retain_policy", optim=name, use_cpu=True, report_to=[])
    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, _model())
    except (ImportError, ValueError):
        return None
    return cls(_model().parameters(), **kwargs)


@pytest.mark.parametrize("requested", [None, *OPTIMIZER_NAMES])
def test_mixin_decision_and_callback_status_agree_on_every_pair(tmp_path, requested):
    retention = RetentionConfig(optimizer=requested, mismatch_mitigation=True, consistency_policy="off",
                                record_lineage=False)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = _OptTrainer(model=_model(), args=args, retention=retention)
    optims = ALL_OPTIM if requested in (None, "auto") else ["adamw_torch"]
    checked = 0
    for optim in optims:
        args.optim = OptimizerNames(optim)
        for pretrained in PRETRAINED:
            found = _lookup(pretrained)
            plan, name, _ = trainer._decide_optimizer(found)
            callback = OptimizerConsistencyCallback(retention=retention, lineage=lambda found=found: found)
            used = _instance(plan["built_by"], name or optim)
            status = callback.check(args=args, optimizer=used)["status"]
            pair = (requested, optim, pretrained, plan["optimizer"], callback.finding["finetune_optimizer"])
            assert plan["optimizer"] == callback.finding["finetune_optimizer"], pair
            assert plan["status"] == status and plan["mismatch"] == (status == "mismatch"), pair
            assert plan["mitigation_applied"] == (status == "mismatch"), pair
            assert (status == "unknown") == (pretrained is None), pair
            checked += 1
    assert checked == len(optims) * len(PRETRAINED)


class _Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.arange(3 + i, 19 + i) % 250 + 3
        return {"input_ids": ids, "labels": ids.clone()}


def _args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                    report_to=[], save_strategy="no", learning_rate=1e-3, disable_tqdm=True,
                    dataloader_num_workers=0, logging_steps=1)
    settings.update(overrides)
    return TrainingArguments(**settings)


def _ensure(trainer, cls, **kwargs):
    """The trainer's callback of ``cls``, adding it as RetentionMixin does (``lineage=trainer.pretraining_lineage``)
    when the trainer has not added one itself."""
    found = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cls)]
    if found:
        return found[0]
    callback = cls(retention=trainer.retention, lineage=trainer.pretraining_lineage, **kwargs)
    trainer.add_callback(callback)
    return callback


@pytest.mark.parametrize(("requested", "optim", "pretrained", "status"), [
    (None, "sgd", "adamw", "mismatch"),
    (None, "adamw_torch", "adam", "match"),
    (None, "adagrad", None, "unknown"),
    ("muon", "adamw_torch", "muon", "match"),
    ("muon", "adamw_torch", "adamw", "mismatch"),
    ("adam", "adamw_torch", "lamb", "mismatch"),
    ("auto", "sgd", "muon", "match"),
    ("auto", "adafactor", "galore", "mismatch"),
    ("auto", "rmsprop", "other:schedule_free_adamw", "mismatch"),
])
def test_real_runs_agree(tmp_path, monkeypatch, requested, optim, pretrained, status):
    import hf_retain.mixin

    monkeypatch.setattr(hf_retain.mixin, "lookup_pretraining_optimizer", lambda model, **kw: _lookup(pretrained))
    retention = RetentionConfig(optimizer=requested, mismatch_mitigation=True, record_lineage=False)
    trainer = RetentionTrainer(model=build_tiny_model(num_hidden_layers=1), args=_args(tmp_path, optim=optim),
                               train_dataset=_Rows(), retention=retention)
    callback = _ensure(trainer, OptimizerConsistencyCallback, policy="warn")
    if status == "mismatch":
        with pytest.warns(OptimizerMismatchWarning):
            trainer.train()
    else:
        trainer.train()
    choice = trainer.optimizer_choice
    assert callback.finding["status"] == choice["status"] == status
    assert choice["mismatch"] == (status == "mismatch") == choice["mitigation_applied"]
    assert callback.finding["finetune_optimizer"] == choice["optimizer"]


# ---- one lookup per run ---------------------------------------------------------------------------------------
def test_a_retention_run_looks_the_pretraining_optimizer_up_once(tmp_path, monkeypatch):
    import hf_retain.callbacks.consistency
    import hf_retain.callbacks.lineage
    import hf_retain.lineage.reader
    import hf_retain.mixin
    import hf_retain.optim.factory

    calls = []

    def counting_lookup(model, **kwargs):
        calls.append(model)
        return _lookup("muon")

    for module in (hf_retain.mixin, hf_retain.callbacks.consistency, hf_retain.callbacks.lineage,
                   hf_retain.optim.factory, hf_retain.lineage.reader):
        monkeypatch.setattr(module, "lookup_pretraining_optimizer", counting_lookup)
    retention = RetentionConfig(optimizer="auto", mismatch_mitigation=True, consistency_policy="warn",
                                record_lineage=True)
    trainer = RetentionTrainer(model=build_tiny_model(num_hidden_layers=1), train_dataset=_Rows(),
                               args=_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1),
                               retention=retention)
    consistency = _ensure(trainer, OptimizerConsistencyCallback, policy="warn")
    lineage = _ensure(trainer, LineageCallback)
    trainer.train()
    assert len(calls) == 1
    assert trainer.optimizer_choice["optimizer"] == "muon" and consistency.finding["status"] == "match"
    assert lineage.lineage(trainer.args)["base_model_optimizer"]["name"] == "muon"


def test_standalone_callbacks_look_up_once_themselves(tmp_path, monkeypatch):
    import hf_retain.callbacks.consistency
    import hf_retain.callbacks.lineage

    calls = []

    def counting_lookup(model, **kwargs):
        calls.append(model)
        return _lookup("adafactor")

    monkeypatch.setattr(hf_retain.callbacks.consistency, "lookup_pretraining_optimizer", counting_lookup)
    monkeypatch.setattr(hf_retain.callbacks.lineage, "lookup_pretraining_optimizer", counting_lookup)
    model = build_tiny_model(num_hidden_layers=1)
    model.name_or_path = "some/base"
    consistency = OptimizerConsistencyCallback(policy="warn")
    lineage = LineageCallback()
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_Rows(), callbacks=[consistency, lineage])
    with pytest.warns(OptimizerMismatchWarning):
        trainer.train()
    consistency.check(model=model, args=trainer.args)  # a second check reuses the first lookup
    assert len(calls) == 2  # one per callback, each standalone
    assert consistency.finding["pretrain_optimizer"] == "adafactor" and lineage.pretrained.name == "adafactor"
    with pytest.raises(TypeError, match="pretraining_lineage"):
        OptimizerConsistencyCallback(lineage="muon")
