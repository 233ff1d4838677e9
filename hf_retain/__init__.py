"""hf_retain: fine-tune Hugging Face models without forgetting what they already knew.

Every public name is importable from here; modules load on first use, so `import hf_retain` stays cheap (the CLI's
`--help` does not import torch).

Example:
    >>> from hf_retain import RetentionConfig
    >>> RetentionConfig(replay_ratio=0.3, replay_dataset="general.jsonl").methods
    ['replay[0.3 examples]']
"""

from __future__ import annotations

from hf_retain._lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> module that defines it. One block per area; keep each block sorted.
_EXPORTS: dict[str, str] = {
    # errors
    "ArmSpecError": "hf_retain.errors",
    "ConfigError": "hf_retain.errors",
    "DatasetError": "hf_retain.errors",
    "DistillCacheError": "hf_retain.errors",
    "FisherError": "hf_retain.errors",
    "MixinOrderError": "hf_retain.errors",
    "ModelLoadError": "hf_retain.errors",
    "OptimizerMismatchError": "hf_retain.errors",
    "RecipeError": "hf_retain.errors",
    "RegistryError": "hf_retain.errors",
    "ReplayColumnError": "hf_retain.errors",
    "RetentionError": "hf_retain.errors",
    "StateFileError": "hf_retain.errors",
    "SuiteError": "hf_retain.errors",
    "TeacherError": "hf_retain.errors",
    "TorchVersionError": "hf_retain.errors",
    # models and data
    "ModelResolver": "hf_retain.models",
    "builtin_corpora": "hf_retain.data.corpora",
    "build_tiny_model": "hf_retain.assets",
    "load_model": "hf_retain.models",
    "load_text_dataset": "hf_retain.data.loading",
    "load_tiny_tokenizer": "hf_retain.assets",
    "load_tokenizer": "hf_retain.models",
    "pretrained_tiny_model": "hf_retain.pretrain",
    "register_model_resolver": "hf_retain.models",
    "resolve_model": "hf_retain.models",
    # foundation
    "enable_fsdp_on_cpu": "hf_retain.distributed",
    "end_distributed": "hf_retain.distributed",
    "RetentionConfig": "hf_retain.config",
    "RetentionSFTTrainer": "hf_retain.trainer",
    "RetentionTrainer": "hf_retain.trainer",
    "build_trainer": "hf_retain.trainer",
    "evaluate_loss": "hf_retain.evaluation.loss",
    "load_recipe": "hf_retain.train",
    "RetentionReport": "hf_retain.evaluation.report",
    "report_figure": "hf_retain.evaluation.plots",
    "scatter_learning_forgetting": "hf_retain.evaluation.plots",
    # lineage and optimizer consistency
    "LineageCallback": "hf_retain.callbacks.lineage",
    "OptimizerConsistencyCallback": "hf_retain.callbacks.consistency",
    "OptimizerInfo": "hf_retain.lineage.info",
    "canonical_optimizer_name": "hf_retain.optim.policy",
    "lookup_pretraining_optimizer": "hf_retain.lineage.reader",
    "parse_model_card": "hf_retain.lineage.card",
    "read_pretraining_optimizer": "hf_retain.lineage.reader",
    # optimizers
    "MuonWithAdamW": "hf_retain.optim",
    "OptimizerMixin": "hf_retain.optim",
    "create_optimizer": "hf_retain.optim",
    "deepspeed_muon_config": "hf_retain.optim",
    "optimizer_cls_and_kwargs": "hf_retain.optim",
    "split_params_for_muon": "hf_retain.optim",
    "SUPPORTED_OPTIMIZERS": "hf_retain.optim.policy",
    "OPTIMIZER_NAMES": "hf_retain.optim.policy",
    "same_family": "hf_retain.optim.policy",
    "trainer_optim_family": "hf_retain.optim.policy",
    "consistency_status": "hf_retain.optim.policy",
    "resolve_auto": "hf_retain.optim.policy",
    "mitigation_scales": "hf_retain.optim.policy",
    "apply_mitigation": "hf_retain.optim.policy",
    "lineage_family": "hf_retain.optim.factory",
    "pretraining_optimizer_family": "hf_retain.optim.factory",
    "torch_muon_function": "hf_retain.optim.muon",
    "SUPPORTED_TORCH": "hf_retain.optim.muon",
    # EWC
    "EWCMixin": "hf_retain.ewc",
    "EWCPenalty": "hf_retain.ewc.mixin",
    "FisherState": "hf_retain.ewc.fisher",
    "estimate_fisher": "hf_retain.ewc.fisher",
    # distillation
    "DistillationMixin": "hf_retain.distill",
    "OfflineTeacherCache": "hf_retain.distill",
    "TeacherMode": "hf_retain.distill",
    "build_distill_cache": "hf_retain.distill",
    "chunked_divergence_sum": "hf_retain.distill",
    "load_path_teacher": "hf_retain.distill",
    "offline_divergence_sum": "hf_retain.distill",
    "snapshot_teacher": "hf_retain.distill",
    "teacher_hidden_states": "hf_retain.distill",
    # replay and mixing
    "CurriculumCallback": "hf_retain.callbacks.curriculum",
    "CurriculumSchedule": "hf_retain.replay.curriculum",
    "ReplayBuffer": "hf_retain.replay.buffer",
    "ReplayCollator": "hf_retain.replay.collator",
    "ReplayMixin": "hf_retain.replay.mixin",
    "generate_replay": "hf_retain.replay.generative",
    "mix_datasets": "hf_retain.replay.mixing",
    # evaluation, regression guard, metrics
    "BenchmarkResult": "hf_retain.evaluation.results",
    "FunctionEvaluator": "hf_retain.evaluation.evaluators",
    "LMEvalEvaluator": "hf_retain.evaluation.lm_eval",
    "LossEvaluator": "hf_retain.evaluation.evaluators",
    "MultipleChoiceEvaluator": "hf_retain.evaluation.evaluators",
    "QAEvaluator": "hf_retain.evaluation.evaluators",
    "RegressionEarlyStoppingCallback": "hf_retain.callbacks.regression",
    "BenchmarkCheck": "hf_retain.evaluation.results",
    "Evaluator": "hf_retain.evaluation.evaluators",
    "compute_metric": "hf_retain.evaluation.scoring",
    "score_continuations": "hf_retain.evaluation.scoring",
    "check_suite_file": "hf_retain.evaluation.suite",
    "EvaluatorType": "hf_retain.evaluation.suite",
    "GateReport": "hf_retain.evaluation.gate",
    "run_gate": "hf_retain.evaluation.gate",
    "RetentionMatrix": "hf_retain.metrics",
    "RetentionSuite": "hf_retain.evaluation.suite",
    "SuiteResult": "hf_retain.evaluation.results",
    "average_accuracy": "hf_retain.metrics",
    "backward_transfer": "hf_retain.metrics",
    "compare_to_baseline": "hf_retain.evaluation.results",
    "forgetting": "hf_retain.metrics",
    "forward_transfer": "hf_retain.metrics",
    # comparisons and benchmarks
    "Arm": "hf_retain.compare",
    "ArmRecord": "hf_retain.compare",
    "BenchSettings": "hf_retain.bench",
    "Comparison": "hf_retain.compare",
    "Task": "hf_retain.compare",
    "parse_arm": "hf_retain.compare",
    "pareto_front": "hf_retain.bench",
    "run_comparison": "hf_retain.compare",
    "run_retention_benchmark": "hf_retain.bench",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


__getattr__, __dir__ = lazy_exports('hf_retain', _EXPORTS, globals())
