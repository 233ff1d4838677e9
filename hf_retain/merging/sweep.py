"""Score merges with a `RetentionSuite` and keep the ones that forget least: `evaluate_merges`, `MergeReport`.

The base, every input and every merge are scored by the same suite (the one the training guard and `hf-retain gate`
use). Each benchmark's *gain* is its improvement over the base in score units (sign-corrected, so a positive gain is
better whether the benchmark is a loss or an accuracy). Benchmarks are split into *general* ones (what the base
could already do; their mean loss of gain is the *general drift*) and *domain* ones (what the inputs were trained
for). A merge is on the Pareto front when no other merge has at least its gain on every domain and at most its
drift, and is better on one.

The recommendation, among the front: the merge with the best worst-domain gain (a merge exists to keep every
specialist's skill), among those whose drift is at most ``max_general_drift`` when set; without a bound, the one
with the best worst-domain gain minus drift. Ties go to the smaller drift.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from peft import PeftModel

from hf_retain.errors import SuiteError
from hf_retain.evaluation.plots import scatter_learning_forgetting
from hf_retain.evaluation.results import SuiteResult
from hf_retain.evaluation.suite import RetentionSuite
from hf_retain.models import load_model, load_tokenizer

__all__ = ["MergeReport", "ScoredModel", "evaluate_merges", "merge_pareto_front", "load_for_evaluation"]


@dataclass
class ScoredModel:
    """One scored model: ``role`` is 'base', 'input' or 'merge'; ``gains`` are per benchmark, vs the base."""

    name: str
    role: str
    path: str
    scores: dict[str, float]
    gains: dict[str, float]
    general_drift: float
    domain_gains: dict[str, float]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_domain_gain(self) -> float:
        return min(self.domain_gains.values()) if self.domain_gains else math.nan


def merge_pareto_front(points: Mapping[str, tuple[Sequence[float], float]]) -> list[str]:
    """Names of the points ``{name: (domain_gains, general_drift)}`` that no other point dominates (at least the same
    gain on every domain and at most the drift, strictly better on one). Points with a NaN are never on it."""
    clean = {name: (tuple(g), d) for name, (g, d) in points.items()
             if not math.isnan(d) and not any(math.isnan(x) for x in g)}
    front = []
    for name, (gains, drift) in clean.items():
        dominated = False
        for other, (o_gains, o_drift) in clean.items():
            if other == name:
                continue
            no_worse = o_drift <= drift and all(a >= b for a, b in zip(o_gains, gains))
            better = o_drift < drift or any(a > b for a, b in zip(o_gains, gains))
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.append(name)
    return front


@dataclass
class MergeReport:
    """Scores of the base, the inputs and the merges; the merges' Pareto front and the recommended merge."""

    rows: list[ScoredModel]
    general: list[str]
    domains: list[str]
    front: list[str]
    recommended: str | None
    rule: str
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def row(self, name: str) -> ScoredModel:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {"general": self.general, "domains": self.domains, "front": self.front,
                "recommended": self.recommended, "rule": self.rule, "higher_is_better": self.higher_is_better,
                "models": [{"name": r.name, "role": r.role, "path": r.path, "parameters": r.parameters,
                            "scores": clean(r.scores), "gains": clean(r.gains),
                            "general_drift": clean(r.general_drift), "domain_gains": clean(r.domain_gains)}
                           for r in self.rows]}

    def to_markdown(self) -> str:
        benchmarks = [*self.general, *self.domains]
        arrows = {b: "↑" if self.higher_is_better.get(b, False) else "↓" for b in benchmarks}
        lines = ["| model | role | " + " | ".join(f"{b} {arrows[b]}" for b in benchmarks)
                 + " | general drift | worst domain gain | front |",
                 "|---|---|" + "---|" * len(benchmarks) + "---|---|---|"]
        for r in self.rows:
            mark = "**recommended**" if r.name == self.recommended else ("yes" if r.name in self.front else "")
            lines.append(f"| {r.name} | {r.role} | " + " | ".join(_fmt(r.scores.get(b, math.nan))
                                                                   for b in benchmarks)
                         + f" | {_fmt(r.general_drift, True)} | {_fmt(r.worst_domain_gain, True)} | {mark} |")
        lines += ["", f"General benchmarks: {', '.join(self.general) or 'none'}; domain benchmarks: "
                      f"{', '.join(self.domains) or 'none'}. Gains and drift are in score units, against the base.",
                  f"Pareto front (merges): {', '.join(self.front) or 'none'}.",
                  f"Recommended: {self.recommended or 'none'} ({self.rule})."]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike[str]) -> Path:
        points = [(r.name + (" *" if r.name == self.recommended else ""), r.worst_domain_gain if r.role != "base"
                   else 0.0, r.general_drift if r.role != "base" else 0.0) for r in self.rows]
        return scatter_learning_forgetting(points, path, xlabel="worst domain gain vs base (score units)",
                                           ylabel="general drift vs base (score units)",
                                           title="merges: right = learned more, down = forgot less (* recommended)")

    def save(self, out_dir: str | os.PathLike[str], *, stem: str = "merge_report") -> dict[str, Path]:
        """Write ``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` atomically into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
        for key, text in (("json", json.dumps(self.to_dict(), indent=2)), ("markdown", self.to_markdown())):
            tmp = paths[key].with_name(paths[key].name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, paths[key])
        png = out / f"{stem}.png"
        tmp_png = out / f".{stem}.tmp.png"
        self.plot(tmp_png)
        os.replace(tmp_png, png)
        paths["png"] = png
        return paths


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "nan"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def load_for_evaluation(path: str, base: str) -> Any:
    """A model to score: a full checkpoint as saved, or a LoRA adapter folder merged into ``base``."""
    folder = Path(path)
    if (folder / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(_load(base), str(folder)).merge_and_unload()
    return _load(path)


def _load(name: str) -> Any:
    return load_model(SimpleNamespace(model_name_or_path=name, dtype=None, model_revision="main",
                                      attn_implementation=None))


def _split_benchmarks(suite: RetentionSuite, general: Sequence[str] | None) -> tuple[list[str], list[str]]:
    names = suite.names
    if general is None:
        general = [n for n in names if "general" in n.lower()]
        if not general:
            raise SuiteError(f"No suite benchmark is marked general (names: {names}). Name the benchmarks that "
                             "measure general ability: evaluate: {general: [NAME, ...]} in the merge config, or "
                             "general=[...].")
    unknown = [g for g in general if g not in names]
    if unknown:
        raise SuiteError(f"general benchmarks {unknown} are not in the suite {names}.")
    domains = [n for n in names if n not in general]
    return list(general), domains


def _recommend(merges: list[ScoredModel], front: list[str], max_drift: float | None) -> tuple[str | None, str]:
    pool = [m for m in merges if m.name in front]
    if max_drift is not None:
        within = [m for m in pool if m.general_drift <= max_drift]
        rule = f"best worst-domain gain among front merges with general drift <= {max_drift:g}"
        if not within:
            closest = min(pool, key=lambda m: m.general_drift, default=None)
            near = f"; the least drift on the front is {closest.name} ({closest.general_drift:+.4f})" if closest \
                else ""
            return None, f"{rule}: no merge is within the bound{near}"
        best = max(within, key=lambda m: (m.worst_domain_gain, -m.general_drift))
        return best.name, rule
    rule = "best worst-domain gain minus general drift among front merges"
    if not pool:
        return None, rule
    best = max(pool, key=lambda m: (m.worst_domain_gain - m.general_drift, -m.general_drift))
    return best.name, rule


def evaluate_merges(suite: RetentionSuite | str | os.PathLike[str], base: str,
                    inputs: Sequence[tuple[str, str]], merges: Sequence[tuple[str, str, Mapping[str, Any]]], *,
                    general: Sequence[str] | None = None, max_general_drift: float | None = None,
                    tokenizer: str | None = None, results: Mapping[str, SuiteResult] | None = None) -> MergeReport:
    """Score ``base``, each ``(name, path)`` input and each ``(name, path, parameters)`` merge with ``suite`` (a
    `RetentionSuite` or a suite YAML) and build the report. ``results`` may hold scores already measured, by path."""
    if not isinstance(suite, RetentionSuite):
        suite = RetentionSuite.from_yaml(suite)
    general_names, domains = _split_benchmarks(suite, general)
    tok = load_tokenizer(tokenizer or base)
    cache: dict[str, SuiteResult] = dict(results or {})

    def score(path: str) -> SuiteResult:
        if path not in cache:
            model = load_for_evaluation(path, base)
            cache[path] = suite.evaluate(model, tok, on_error="raise")
            del model
        return cache[path]

    base_result = score(base)
    higher = {r.name: r.higher_is_better for r in base_result}

    def scored(name: str, role: str, path: str, parameters: Mapping[str, Any]) -> ScoredModel:
        scores = score(path).scores
        gains = {b: (scores[b] - base_result[b].score) * (1 if higher[b] else -1) for b in scores}
        drift = -sum(gains[g] for g in general_names) / len(general_names)
        return ScoredModel(name, role, path, scores, gains, drift, {d: gains[d] for d in domains}, dict(parameters))

    rows = [scored("base", "base", base, {})]
    rows += [scored(name, "input", path, {}) for name, path in inputs]
    merge_rows = [scored(name, "merge", path, params) for name, path, params in merges]
    rows += merge_rows
    front = merge_pareto_front({m.name: (list(m.domain_gains.values()), m.general_drift) for m in merge_rows})
    recommended, rule = _recommend(merge_rows, front, max_general_drift)
    return MergeReport(rows, general_names, domains, front, recommended, rule, higher)
