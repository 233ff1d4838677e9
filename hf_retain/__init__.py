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
    "MergeError": "hf_retain.errors",
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
    "build_tiny_model": "hf_retain.assets",
    "builtin_corpora": "hf_retain.data.corpora",
    "load_model": "hf_retain.models",
    "load_text_dataset": "hf_retain.data.loading",
    "load_tiny_tokenizer": "hf_retain.assets",
    "load_tokenizer": "hf_retain.models",
    "ModelResolver": "hf_retain.models",
    "pretrained_tiny_model": "hf_retain.pretrain",
    "register_model_resolver": "hf_retain.models",
    "resolve_model": "hf_retain.models",
    # checkpoint state files
    "load_module_state": "hf_retain.state",
    "load_safetensors_state": "hf_retain.state",
    "read_json_state": "hf_retain.state",
    "save_module_atomic": "hf_retain.state",
    "save_safetensors_atomic": "hf_retain.state",
    "write_json_atomic": "hf_retain.state",
    # foundation
    "build_trainer": "hf_retain.trainer",
    "enable_fsdp_on_cpu": "hf_retain.distributed",
    "end_distributed": "hf_retain.distributed",
    "evaluate_loss": "hf_retain.evaluation.loss",
    "load_recipe": "hf_retain.train",
    "report_figure": "hf_retain.evaluation.plots",
    "RetentionConfig": "hf_retain.config",
    "RetentionReport": "hf_retain.evaluation.report",
    "RetentionSFTTrainer": "hf_retain.trainer",
    "RetentionTrainer": "hf_retain.trainer",
    "scatter_learning_forgetting": "hf_retain.evaluation.plots",
    # lineage and optimizer consistency
    "canonical_optimizer_name": "hf_retain.optim.policy",
    "LineageCallback": "hf_retain.callbacks.lineage",
    "lookup_pretraining_optimizer": "hf_retain.lineage.reader",
    "OptimizerConsistencyCallback": "hf_retain.callbacks.consistency",
    "OptimizerInfo": "hf_retain.lineage.info",
    "parse_model_card": "hf_retain.lineage.card",
    "read_pretraining_optimizer": "hf_retain.lineage.reader",
    # optimizers
    "apply_mitigation": "hf_retain.optim.policy",
    "consistency_status": "hf_retain.optim.policy",
    "create_optimizer": "hf_retain.optim",
    "deepspeed_muon_config": "hf_retain.optim",
    "lineage_family": "hf_retain.optim.factory",
    "mitigation_scales": "hf_retain.optim.policy",
    "MuonWithAdamW": "hf_retain.optim",
    "optimizer_cls_and_kwargs": "hf_retain.optim",
    "OPTIMIZER_NAMES": "hf_retain.optim.policy",
    "OptimizerMixin": "hf_retain.optim",
    "pretraining_optimizer_family": "hf_retain.optim.factory",
    "resolve_auto": "hf_retain.optim.policy",
    "same_family": "hf_retain.optim.policy",
    "split_params_for_muon": "hf_retain.optim",
    "SUPPORTED_OPTIMIZERS": "hf_retain.optim.policy",
    "SUPPORTED_TORCH": "hf_retain.optim.muon",
    "torch_muon_function": "hf_retain.optim.muon",
    "trainer_optim_family": "hf_retain.optim.policy",
    # EWC
    "estimate_fisher": "hf_retain.ewc.fisher",
    "EWCMixin": "hf_retain.ewc",
    "EWCPenalty": "hf_retain.ewc.mixin",
    "FisherState": "hf_retain.ewc.fisher",
    # distillation
    "build_distill_cache": "hf_retain.distill",
    "chunked_divergence_sum": "hf_retain.distill",
    "DistillationMixin": "hf_retain.distill",
    "load_path_teacher": "hf_retain.distill",
    "offline_divergence_sum": "hf_retain.distill",
    "OfflineTeacherCache": "hf_retain.distill",
    "snapshot_teacher": "hf_retain.distill",
    "teacher_hidden_states": "hf_retain.distill",
    "teacher_source": "hf_retain.distill",
    "TeacherMode": "hf_retain.distill",
    # replay and mixing
    "CurriculumCallback": "hf_retain.callbacks.curriculum",
    "CurriculumSchedule": "hf_retain.replay.curriculum",
    "generate_replay": "hf_retain.replay.generative",
    "mix_datasets": "hf_retain.replay.mixing",
    "ReplayBuffer": "hf_retain.replay.buffer",
    "ReplayCollator": "hf_retain.replay.collator",
    "ReplayMixin": "hf_retain.replay.mixin",
    # evaluation, regression guard, metrics
    "average_accuracy": "hf_retain.metrics",
    "backward_transfer": "hf_retain.metrics",
    "BenchmarkCheck": "hf_retain.evaluation.results",
    "BenchmarkResult": "hf_retain.evaluation.results",
    "check_suite_file": "hf_retain.evaluation.suite",
    "compare_to_baseline": "hf_retain.evaluation.results",
    "compute_metric": "hf_retain.evaluation.scoring",
    "Evaluator": "hf_retain.evaluation.evaluators",
    "EvaluatorType": "hf_retain.evaluation.suite",
    "forgetting": "hf_retain.metrics",
    "forward_transfer": "hf_retain.metrics",
    "FunctionEvaluator": "hf_retain.evaluation.evaluators",
    "GateReport": "hf_retain.evaluation.gate",
    "LMEvalEvaluator": "hf_retain.evaluation.lm_eval",
    "LossEvaluator": "hf_retain.evaluation.evaluators",
    "MultipleChoiceEvaluator": "hf_retain.evaluation.evaluators",
    "QAEvaluator": "hf_retain.evaluation.evaluators",
    "RegressionEarlyStoppingCallback": "hf_retain.callbacks.regression",
    "RetentionMatrix": "hf_retain.metrics",
    "RetentionSuite": "hf_retain.evaluation.suite",
    "run_gate": "hf_retain.evaluation.gate",
    "score_continuations": "hf_retain.evaluation.scoring",
    "SuiteResult": "hf_retain.evaluation.results",
    # model merging
    "evaluate_merges": "hf_retain.merging",
    "load_merge_config": "hf_retain.merging",
    "MERGE_METHODS": "hf_retain.merging",
    "merge_models": "hf_retain.merging",
    "merge_pareto_front": "hf_retain.merging",
    "merge_task_vectors": "hf_retain.merging",
    "MergeConfig": "hf_retain.merging",
    "MergeReport": "hf_retain.merging",
    "MergeResult": "hf_retain.merging",
    "slerp": "hf_retain.merging",
    # comparisons and benchmarks
    "Arm": "hf_retain.compare",
    "ArmRecord": "hf_retain.compare",
    "BenchSettings": "hf_retain.bench",
    "Comparison": "hf_retain.compare",
    "pareto_front": "hf_retain.bench",
    "parse_arm": "hf_retain.compare",
    "run_comparison": "hf_retain.compare",
    "run_retention_benchmark": "hf_retain.bench",
    "Task": "hf_retain.compare",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


__getattr__, __dir__ = lazy_exports('hf_retain', _EXPORTS, globals())
