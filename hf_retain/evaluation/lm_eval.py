"""`LMEvalEvaluator`: one lm-evaluation-harness task as a suite benchmark.

lm-evaluation-harness is an optional extra (``pip install lm_eval``): it is imported only when the evaluator runs,
so a suite without ``lm_eval`` benchmarks never needs it.

Example:
    >>> LMEvalEvaluator("arc_easy", limit=100).describe()
    'lm_eval task arc_easy (acc)'
"""

from __future__ import annotations

import importlib
from typing import Any

from hf_retain.errors import SuiteError
from hf_retain.evaluation.evaluators import Evaluator

__all__ = ["LMEvalEvaluator"]


class LMEvalEvaluator(Evaluator):
    """One lm-evaluation-harness task, run on the in-memory model (``pip install lm_eval``; offline when the
    task's data is local or cached, e.g. a task YAML in ``include_path`` pointing at local files).

    ``metric`` names the harness metric ('acc', 'acc_norm', 'exact_match', ...); its direction comes from the
    harness's ``higher_is_better`` table. ``limit`` caps the examples per task, which keeps in-training checks cheap.
    """

    def __init__(
        self,
        task: str,
        *,
        name: str | None = None,
        metric: str = "acc",
        num_fewshot: int | None = None,
        limit: int | float | None = None,
        include_path: str | None = None,
        batch_size: int = 8,
        tokenizer: Any = None,
    ) -> None:
        if not task or not isinstance(task, str):
            raise SuiteError(f"LMEvalEvaluator: task must be an lm-evaluation-harness task name, got {task!r}.")
        self.task, self.name, self.metric = task, name or task, metric
        self.num_fewshot, self.limit, self.include_path = num_fewshot, limit, include_path
        self.batch_size, self.tokenizer = batch_size, tokenizer
        self.higher_is_better = True

    @staticmethod
    def _harness() -> Any:
        try:
            return importlib.import_module("lm_eval")
        except ImportError as err:
            raise SuiteError(
                "LMEvalEvaluator needs lm-evaluation-harness, which is not installed. Install it with "
                "`pip install lm_eval` (or `pip install 'lm_eval[hf]'`), or drop the lm_eval benchmark from the suite."
            ) from err

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        lm_eval = self._harness()
        from lm_eval.models.huggingface import HFLM

        tok = self._tokenizer(tokenizer)
        device = str(next(model.parameters()).device)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=self.batch_size, device=device)
        task_manager = None
        if self.include_path:
            from lm_eval.tasks import TaskManager

            task_manager = TaskManager(include_path=self.include_path)
        out = lm_eval.simple_evaluate(model=lm, tasks=[self.task], num_fewshot=self.num_fewshot, limit=self.limit,
                                      task_manager=task_manager, log_samples=False, bootstrap_iters=0)
        if not out or self.task not in out.get("results", {}):
            raise SuiteError(f"lm_eval returned no results for task {self.task!r} (is the task name right?).")
        metrics = out["results"][self.task]
        keys = [k for k in metrics if k == self.metric or k.startswith(self.metric + ",")]
        if not keys:
            available = sorted({k.split(",")[0] for k in metrics if "stderr" not in k and k != "alias"})
            raise SuiteError(f"lm_eval task {self.task!r} has no metric {self.metric!r}; it reports {available}.")
        direction = out.get("higher_is_better", {}).get(self.task, {}).get(self.metric)
        if direction is not None:
            self.higher_is_better = bool(direction)
        return float(metrics[keys[0]])

    def describe(self) -> str:
        return f"lm_eval task {self.task} ({self.metric})"
