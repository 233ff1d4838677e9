"""Every public name resolves from `hf_retain`, and the modules the issues name are importable."""

import importlib

import pytest

import hf_retain

CONTRACT_NAMES = [
    "RetentionConfig", "RetentionTrainer", "RetentionSFTTrainer", "build_trainer",
    "parse_model_card", "read_pretraining_optimizer", "OptimizerInfo", "OptimizerConsistencyCallback",
    "LineageCallback", "create_optimizer", "estimate_fisher", "FisherState", "EWCMixin", "DistillationMixin",
    "ReplayBuffer", "ReplayCollator", "mix_datasets", "CurriculumSchedule", "RetentionSuite",
    "RegressionEarlyStoppingCallback", "RetentionMatrix", "backward_transfer", "forward_transfer",
    "average_accuracy", "forgetting",
]


@pytest.mark.parametrize("name", sorted(hf_retain.__all__))
def test_every_exported_name_resolves(name):
    assert getattr(hf_retain, name) is not None


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_names_the_issues_spell_out_are_exported(name):
    assert name in hf_retain.__all__


@pytest.mark.parametrize("module", ["hf_retain.metrics", "hf_retain.lineage", "hf_retain.optim", "hf_retain.ewc",
                                    "hf_retain.distill", "hf_retain.replay", "hf_retain.evaluation.suite"])
def test_named_modules_import(module):
    importlib.import_module(module)


def test_contract_functions_live_where_the_issues_say():
    from hf_retain.lineage import parse_model_card
    from hf_retain.metrics import RetentionMatrix, backward_transfer
    from hf_retain.optim import create_optimizer

    assert callable(parse_model_card) and callable(create_optimizer) and callable(backward_transfer)
    assert RetentionMatrix([[1.0]]).num_tasks == 1


def test_every_distill_name_is_exported_at_the_top_level():
    import hf_retain.distill as distill

    assert set(distill.__all__) - {"dataset_fingerprint", "tokenizer_fingerprint"} <= set(hf_retain.__all__)
