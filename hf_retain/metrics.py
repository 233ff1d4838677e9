"""Continual-learning metrics on a retention (accuracy) matrix: average accuracy, backward and forward transfer,
forgetting, with JSON round-trip and plots.

``scores[j][i]`` is the score on task ``i`` after training task ``j`` (T tasks trained in order, T tasks evaluated);
``baseline[i]`` is the score on task ``i`` before any training (the R0 row). With the literature's 1-based
``R[j, i] = scores[j-1][i-1]`` and ``R[0, i] = baseline[i-1]`` (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):

* average accuracy  ACC = mean_i R[T, i]
* backward transfer BWT = mean over i < T of (R[T, i] - R[i, i])          (negative: forgetting)
* forward transfer  FWT = mean over i >= 2 of (R[i-1, i] - R[0, i])       (needs the baseline row)
* forgetting        f_i = max over l < T of R[l, i] - R[T, i], for each i < T

These are defined for scores where higher is better (accuracy). For losses, build the matrix with
``higher_is_better=False``: every function then flips signs so that negative BWT and positive forgetting still mean
"got worse" (e.g. BWT is the mean *decrease* of loss on earlier tasks).

Example:
    >>> from hf_retain.metrics import RetentionMatrix, backward_transfer, forward_transfer, forgetting
    >>> R = RetentionMatrix([[0.9, 0.2], [0.7, 0.8]], baseline=[0.1, 0.1])
    >>> round(backward_transfer(R), 3), round(forward_transfer(R), 3), [round(f, 3) for f in forgetting(R)]
    (-0.2, 0.1, [0.2])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_retain.evaluation.plots import report_figure, scatter_learning_forgetting

__all__ = ["RetentionMatrix", "average_accuracy", "backward_transfer", "forward_transfer", "forgetting"]


class RetentionMatrix:
    """``scores[j][i]``: score on task i after training task j (a T x T list of lists or array; NaN marks an
    evaluation that was not run). ``baseline``: the T scores before any training, needed for forward transfer."""

    def __init__(
        self,
        scores: Sequence[Sequence[float]] | np.ndarray,
        baseline: Sequence[float] | np.ndarray | None = None,
        *,
        task_names: Sequence[str] | None = None,
        higher_is_better: bool = True,
    ) -> None:
        matrix = np.asarray(scores, dtype=float)
        if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"RetentionMatrix needs a square T x T matrix (scores[j][i]: task i after training task j), got shape "
                f"{matrix.shape}. Evaluate every task after every training stage (use NaN for skipped evaluations)."
            )
        size = matrix.shape[0]
        base = None
        if baseline is not None:
            base = np.asarray(baseline, dtype=float)
            if base.shape != (size,):
                raise ValueError(f"baseline must hold one score per task ({size}), got shape {base.shape}.")
        names = list(task_names) if task_names is not None else [f"task{i + 1}" for i in range(size)]
        if len(names) != size:
            raise ValueError(f"task_names has {len(names)} names for {size} tasks.")
        self.scores, self.baseline, self.task_names = matrix, base, names
        self.higher_is_better = bool(higher_is_better)

    @property
    def num_tasks(self) -> int:
        return self.scores.shape[0]

    def _signed(self) -> tuple[np.ndarray, np.ndarray | None]:
        sign = 1.0 if self.higher_is_better else -1.0
        return sign * self.scores, (None if self.baseline is None else sign * self.baseline)

    def _need(self, values: np.ndarray, what: str) -> np.ndarray:
        if np.isnan(values).any():
            raise ValueError(f"{what} needs matrix entries that are NaN (not evaluated); evaluate them first.")
        return values

    # ---- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def clean(values: np.ndarray) -> list[Any]:
            return [None if math.isnan(v) else float(v) for v in values.tolist()]

        return {
            "scores": [clean(row) for row in self.scores],
            "baseline": None if self.baseline is None else clean(self.baseline),
            "task_names": self.task_names,
            "higher_is_better": self.higher_is_better,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetentionMatrix:
        def nan(values: Sequence[Any]) -> list[float]:
            return [math.nan if v is None else float(v) for v in values]

        base = data.get("baseline")
        return cls([nan(row) for row in data["scores"]], None if base is None else nan(base),
                   task_names=data.get("task_names"), higher_is_better=data.get("higher_is_better", True))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RetentionMatrix:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.write_text(self.to_json(), encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RetentionMatrix:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def summary(self) -> dict[str, Any]:
        """Every metric that the matrix supports (FWT only with a baseline)."""
        out: dict[str, Any] = {"average_accuracy": average_accuracy(self)}
        if self.num_tasks > 1:
            out["backward_transfer"] = backward_transfer(self)
            out["forgetting"] = forgetting(self)
            if self.baseline is not None:
                out["forward_transfer"] = forward_transfer(self)
        return out

    def __repr__(self) -> str:
        base = None if self.baseline is None else self.baseline.tolist()
        return f"RetentionMatrix({self.scores.tolist()}, baseline={base})"

    # ---- plots ---------------------------------------------------------------------------------------------------
    def plot_heatmap(self, path: str | os.PathLike[str], *, title: str = "retention matrix") -> Path:
        """Heatmap of R (rows: after training task j; columns: evaluated task i), values annotated."""
        size = self.num_tasks
        with report_figure(path, figsize=(1.2 * size + 2.4, 1.0 * size + 1.6)) as (fig, ax):
            image = ax.imshow(self.scores, cmap="viridis_r" if not self.higher_is_better else "viridis")
            fig.colorbar(image, ax=ax)
            for j in range(size):
                for i in range(size):
                    value = self.scores[j, i]
                    ax.text(i, j, "-" if math.isnan(value) else f"{value:.3g}", ha="center", va="center",
                            color="white")
            ax.set_xticks(range(size), self.task_names)
            ax.set_yticks(range(size), [f"after {n}" for n in self.task_names])
            ax.set_xlabel("evaluated task")
            ax.set_title(title)
        return Path(path)

    def plot_learning_forgetting(self, path: str | os.PathLike[str], *, title: str = "learning vs forgetting") -> Path:
        """Per task: learning (x: gain from training it, R[i,i] - R[i-1,i]) against forgetting (y)."""
        forgot = [*forgetting(self), 0.0]  # the last task cannot have been forgotten yet
        return scatter_learning_forgetting(list(zip(self.task_names, learning(self), forgot)), path, title=title,
                                           xlabel="learning: gain when the task was trained",
                                           ylabel="forgetting: best earlier score - final score")


def _matrix(matrix: RetentionMatrix | Sequence[Sequence[float]] | np.ndarray) -> RetentionMatrix:
    return matrix if isinstance(matrix, RetentionMatrix) else RetentionMatrix(matrix)


def average_accuracy(matrix: RetentionMatrix | Sequence[Sequence[float]]) -> float:
    """ACC: mean final score over all tasks, ``mean_i R[T, i]`` (in the matrix's own units and direction)."""
    m = _matrix(matrix)
    return float(np.mean(m._need(m.scores[-1], "average_accuracy")))


def backward_transfer(matrix: RetentionMatrix | Sequence[Sequence[float]]) -> float:
    """BWT = mean over i < T of (R[T, i] - R[i, i]): how training later tasks changed earlier ones."""
    m = _matrix(matrix)
    if m.num_tasks < 2:
        raise ValueError("backward_transfer needs at least 2 tasks.")
    signed, _ = m._signed()
    size = m.num_tasks
    final = m._need(signed[-1, : size - 1], "backward_transfer")
    diag = m._need(np.diag(signed)[: size - 1], "backward_transfer")
    return float(np.mean(final - diag))


def forward_transfer(matrix: RetentionMatrix) -> float:
    """FWT = mean over i >= 2 of (R[i-1, i] - R[0, i]): how earlier tasks helped a task before it was trained."""
    m = _matrix(matrix)
    if m.baseline is None:
        raise ValueError("forward_transfer needs the baseline row R0 (scores before any training): "
                         "RetentionMatrix(scores, baseline=[...]).")
    if m.num_tasks < 2:
        raise ValueError("forward_transfer needs at least 2 tasks.")
    signed, base = m._signed()
    size = m.num_tasks
    before = m._need(np.array([signed[i - 1, i] for i in range(1, size)]), "forward_transfer")
    return float(np.mean(before - base[1:]))


def forgetting(matrix: RetentionMatrix | Sequence[Sequence[float]]) -> list[float]:
    """Per task i < T: ``max over l < T of R[l, i] - R[T, i]`` (best earlier score minus final; > 0 = forgotten)."""
    m = _matrix(matrix)
    if m.num_tasks < 2:
        raise ValueError("forgetting needs at least 2 tasks.")
    signed, _ = m._signed()
    size = m.num_tasks
    out = []
    for i in range(size - 1):
        earlier = m._need(signed[: size - 1, i], "forgetting")
        out.append(float(earlier.max() - m._need(signed[-1:, i], "forgetting")[0]))
    return out


def learning(matrix: RetentionMatrix) -> list[float]:
    """Per task: gain from training it, ``R[i, i] - R[i-1, i]`` (R0 from the baseline for the first task; NaN
    without a baseline)."""
    signed, base = matrix._signed()
    out = []
    for i in range(matrix.num_tasks):
        before = (base[i] if base is not None else math.nan) if i == 0 else signed[i - 1, i]
        out.append(float(signed[i, i] - before))
    return out
