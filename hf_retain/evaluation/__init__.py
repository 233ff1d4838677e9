"""Measuring a model: held-out loss, benchmark suites and the regression checks built on them.

* `loss`: `evaluate_loss`, the held-out NLL that reports' forgetting and learning are differences of;
* `results`: `BenchmarkResult`, `SuiteResult` (JSON round-trip) and `compare_to_baseline`, which says what
  "regressed" means for the training guard and the CI gate alike;
* `scoring`: `score_continuations` (answer log-likelihoods) and `compute_metric`;
* `evaluators`: `LossEvaluator`, `MultipleChoiceEvaluator`, `QAEvaluator`, `FunctionEvaluator`; `lm_eval`:
  `LMEvalEvaluator` (optional lm-evaluation-harness);
* `suite`: `RetentionSuite`, suite YAML files, `check_suite_file`;
* `gate`: `run_gate` and `GateReport`, behind `hf-retain gate` and the pytest plugin;
* `sharding`: FSDP2 helpers for forward passes outside training;
* `report`, `plots`: the retention report and its figures.
"""
