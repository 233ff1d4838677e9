"""Side-by-side fine-tunes: arms that differ only in what they name, over rounds of tasks, with the report.

An *arm* is a short spec: an optimizer, then ``+``-joined retention methods with optional settings:

    "adamw"   "muon"   "adamw+ewc"   "adamw+ewc=1e4"   "adamw+replay=0.5+distill"   "adamw+lr=3e-4"

Methods: ``ewc[=lambda]``, ``l2sp[=lambda]``, ``distill[=alpha]`` (on the replayed rows when the arm also
replays, as measured best), ``replay[=ratio]``; ``lr=`` overrides the learning rate. Every arm starts from the
recipe with all retention methods off, keeps the recipe's settings for them (e.g. ``replay_dataset``,
``ewc_lambda``), and runs with the same data order, seeds and schedule.

A *round* fine-tunes on the next task of the recipe's ``tasks`` list, starting from the arm's previous model. After
every round each arm is evaluated on every task and on the general data (held-out loss, lower is better), which
gives each arm a retention matrix (`hf_retain.metrics.RetentionMatrix`), its BWT/FWT, and its general drift.

Example:
    >>> from hf_retain.compare import parse_arm
    >>> arm = parse_arm("muon+replay=0.5+distill")
    >>> arm.optimizer, arm.retention["replay_ratio"], arm.retention["distill_on"]
    ('muon', 0.5, 'replay')
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hf_retain.config import RetentionConfig
from hf_retain.data.loading import load_text_dataset
from hf_retain.errors import ArmSpecError
from hf_retain.evaluation.loss import evaluate_loss
from hf_retain.evaluation.plots import report_figure, scatter_learning_forgetting
from hf_retain.metrics import RetentionMatrix, average_accuracy, backward_transfer, forward_transfer
from hf_retain.models import load_model, load_tokenizer
from hf_retain.optim.policy import OPTIMIZER_NAMES
from hf_retain.train import load_recipe, run_recipe

logger = logging.getLogger(__name__)

__all__ = ["Arm", "ArmRecord", "Comparison", "parse_arm", "run_arm", "run_comparison", "Task"]

# Settings used when an arm names a method without a value and the recipe leaves it off. EWC needs a large lambda to
# matter on the benchmark (1e4); replay 0.3 and distillation alpha 1 are the measured good mix.
METHOD_DEFAULTS = {"ewc": 1e4, "l2sp": 1e-2, "distill": 1.0, "replay": 0.3}
_ARM_NAME = re.compile(r"^[A-Za-z0-9_.+=-]+$")




@dataclass(frozen=True)
class Arm:
    """One side of a comparison: its name (the spec), optimizer, RetentionConfig overrides, training overrides."""

    name: str
    optimizer: str
    retention: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A fine-tuning stage: training data and held-out data (any form `load_text_dataset` reads)."""

    name: str
    dataset_name: str
    eval_dataset_name: str | None = None
    train_split: str = "train"
    eval_split: str = "eval"


def parse_arm(spec: str) -> Arm:
    """Parse ``optimizer[+method[=value]]...`` (see the module docstring)."""
    parts = [p.strip() for p in spec.strip().split("+")]
    if not spec.strip() or not all(parts) or not _ARM_NAME.match(spec.strip()):
        raise ArmSpecError(f"arm {spec!r} is not of the form optimizer[+method[=value]]..., e.g. 'adamw+replay=0.3'.")
    optimizer = parts[0].lower()
    if optimizer not in OPTIMIZER_NAMES:
        raise ArmSpecError(f"arm {spec!r} starts with {parts[0]!r}; it must start with an optimizer, one of "
                           f"{list(OPTIMIZER_NAMES)}.")
    retention: dict[str, Any] = {"optimizer": optimizer}
    training: dict[str, Any] = {}
    for part in parts[1:]:
        name, _, raw = part.partition("=")
        name = name.lower()
        value: float | None = None
        if raw:
            try:
                value = float(raw)
            except ValueError:
                raise ArmSpecError(f"arm {spec!r}: {part!r} needs a number after '='.") from None
        if name in ("ewc", "l2sp"):
            retention.update(ewc_mode=name, ewc_lambda=value if value is not None else None)
        elif name == "distill":
            retention["distill_alpha"] = value if value is not None else None
        elif name == "replay":
            retention["replay_ratio"] = value if value is not None else None
        elif name == "lr" and value is not None:
            training["learning_rate"] = value
        else:
            raise ArmSpecError(f"arm {spec!r}: unknown part {part!r}; methods are ewc, l2sp, distill, replay "
                               "(each with an optional =value) and lr=VALUE.")
    if "distill_alpha" in retention:
        retention["distill_on"] = "replay" if "replay_ratio" in retention else "train"
    return Arm(name=spec.strip(), optimizer=optimizer, retention=retention, training=training)


def arm_retention(arm: Arm, base: RetentionConfig) -> RetentionConfig:
    """The arm's RetentionConfig: the recipe's, with every method off except those the arm names."""
    values = dict(base.to_dict(), ewc_lambda=0.0, distill_alpha=0.0, replay_ratio=0.0, curriculum=None)
    for key, value in arm.retention.items():
        if value is None:  # named without a value: the recipe's setting if it had one on, else our default
            method = {"ewc_lambda": arm.retention.get("ewc_mode", "ewc"), "distill_alpha": "distill",
                      "replay_ratio": "replay"}[key]
            value = getattr(base, key) or METHOD_DEFAULTS[method]
        values[key] = value
    if values["distill_alpha"] and values["distill_on"] == "replay" and not values["replay_ratio"]:
        values["distill_on"] = "train"
    return RetentionConfig(**values)


# ---- running ---------------------------------------------------------------------------------------------------
@dataclass
class ArmRecord:
    """What one arm produced: held-out losses per round (row 0 = before training), drift, timings."""

    arm: str
    tasks: list[str]
    task_losses: list[list[float]]  # [round][task], round 0 = before any training
    general_losses: list[float]  # [round]
    weight_drift: list[float]  # [round]: ||theta_r - theta_0|| / ||theta_0||
    seconds: list[float]  # [round], training time
    methods: list[str] = field(default_factory=list)

    def matrix(self):
        return RetentionMatrix(self.task_losses[1:], baseline=self.task_losses[0], higher_is_better=False)

    def summary(self) -> dict[str, float]:
        matrix = self.matrix()
        rounds = len(self.task_losses) - 1
        return {
            "average_loss": average_accuracy(matrix) if rounds == len(self.tasks) else math.nan,
            "bwt": backward_transfer(matrix) if rounds >= 2 else math.nan,
            "fwt": forward_transfer(matrix) if rounds >= 2 else math.nan,
            "general_drift": self.general_losses[-1] - self.general_losses[0],
            "weight_drift": self.weight_drift[-1],
            "learning": self.task_losses[0][0] - self.task_losses[1][0],
            "seconds": sum(self.seconds),
        }


def _weight_drift(model: Any, start: dict[str, Any]) -> float:
    import torch

    num, den = 0.0, 0.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in start:
                num += float((param.detach().float().cpu() - start[name]).pow(2).sum())
                den += float(start[name].pow(2).sum())
    return math.sqrt(num / den) if den else math.nan


def run_arm(
    recipe: Any,
    arm: Arm,
    tasks: list[Task],
    general: Any,
    *,
    rounds: int | None = None,
    output_dir: str | os.PathLike[str],
    eval_rows: int = 256,
) -> ArmRecord:
    """Fine-tune one arm over ``rounds`` tasks (default all), evaluating after each round."""
    rounds = len(tasks) if rounds is None else rounds
    if not 1 <= rounds <= len(tasks):
        raise ValueError(f"rounds={rounds} but the recipe lists {len(tasks)} tasks; use 1..{len(tasks)}.")
    tokenizer = load_tokenizer(recipe.model.model_name_or_path)
    max_length = recipe.training.max_length or 256
    evals = [load_text_dataset(t.eval_dataset_name or t.dataset_name, t.eval_split if t.eval_dataset_name else
                               t.train_split, max_samples=eval_rows) for t in tasks]

    def measure(model: Any) -> tuple[list[float], float]:
        return ([evaluate_loss(model, e, tokenizer, max_length=max_length) for e in evals],
                evaluate_loss(model, general, tokenizer, max_length=max_length))

    model = load_model(recipe.model)
    start = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}
    task_row, general_loss = measure(model)
    record = ArmRecord(arm=arm.name, tasks=[t.name for t in tasks], task_losses=[task_row],
                       general_losses=[general_loss], weight_drift=[0.0], seconds=[])
    retention = arm_retention(arm, recipe.retention)
    record.methods = retention.methods
    for index in range(rounds):
        task = tasks[index]
        training = replace(copy.deepcopy(recipe.training), output_dir=str(Path(output_dir) / f"round{index + 1}"),
                           **arm.training)
        data = replace(recipe.data, dataset_name=task.dataset_name, dataset_train_split=task.train_split,
                       eval_dataset_name=None)
        stage = replace(recipe, training=training, data=data, retention=retention)
        logger.info("arm %s, round %d/%d: task %s", arm.name, index + 1, rounds, task.name)
        started = time.perf_counter()
        trainer = run_recipe(stage, model=model)
        record.seconds.append(round(time.perf_counter() - started, 2))
        model = trainer.model
        task_row, general_loss = measure(model)
        record.task_losses.append(task_row)
        record.general_losses.append(general_loss)
        record.weight_drift.append(_weight_drift(model, start))
    return record


# ---- the report --------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """All arms' records; renders ``report.md``, ``report.json`` and PNG plots."""

    records: list[ArmRecord]
    meta: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[tuple[str, dict[str, float]]]:
        """Arms ranked by general drift (least forgetting first), ties broken by learning."""
        rows = [(r.arm, r.summary()) for r in self.records]
        return sorted(rows, key=lambda item: (item[1]["general_drift"], -item[1]["learning"]))

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "arms": [dict(asdict(r), summary=r.summary()) for r in self.records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        names = set(ArmRecord.__dataclass_fields__)
        return cls([ArmRecord(**{k: v for k, v in row.items() if k in names}) for row in data["arms"]],
                   meta=data.get("meta", {}))

    def to_markdown(self) -> str:
        lines = ["# hf_retain comparison", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.meta.items()] + [""]
        lines += ["Scores are held-out losses (nats/token, lower is better). BWT < 0 and positive general drift "
                  "mean forgetting; learning is the drop of the first task's loss in round 1.", "",
                  "## Ranked summary (least general drift first)", "",
                  "| rank | arm | methods | general drift | learning | BWT | FWT | weight drift | train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        methods = {r.arm: ", ".join(r.methods) or "-" for r in self.records}
        for rank, (arm, s) in enumerate(self.ranked(), start=1):
            lines.append(f"| {rank} | {arm} | {methods[arm]} | {s['general_drift']:+.3f} | {s['learning']:+.3f} | "
                         f"{_fmt(s['bwt'])} | {_fmt(s['fwt'])} | {s['weight_drift']:.3f} | {s['seconds']:.0f} |")
        for record in self.records:
            lines += ["", f"## {record.arm}", "", "| after round | " + " | ".join(record.tasks) + " | general |",
                      "|---" * (len(record.tasks) + 2) + "|"]
            for index, row in enumerate(record.task_losses):
                label = "before" if index == 0 else str(index)
                cells = " | ".join(f"{v:.3f}" for v in row)
                lines.append(f"| {label} | {cells} | {record.general_losses[index]:.3f} |")
        return "\n".join(lines) + "\n"

    def plot(self, out_dir: Path) -> list[Path]:
        points = [(r.arm, r.summary()["learning"], r.summary()["general_drift"]) for r in self.records]
        paths = [scatter_learning_forgetting(points, out_dir / "learning_vs_forgetting.png",
                                             xlabel="learning (first-task loss decrease)",
                                             ylabel="forgetting (general loss increase)")]
        paths.append(out_dir / "drift_per_round.png")
        with report_figure(paths[-1]) as (_fig, ax):
            for record in self.records:
                drift = [g - record.general_losses[0] for g in record.general_losses]
                ax.plot(range(len(drift)), drift, marker="o", label=record.arm)
            ax.set_xlabel("round")
            ax.set_ylabel("general loss drift")
            ax.legend()
            ax.grid(alpha=0.3)
        for record in self.records:
            if len(record.task_losses) > 1:
                safe = re.sub(r"[^A-Za-z0-9_.-]", "_", record.arm)
                paths.append(record.matrix().plot_heatmap(out_dir / f"matrix_{safe}.png", title=record.arm))
        return paths

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        _atomic_write(paths["json"], json.dumps(self.to_dict(), indent=2))
        _atomic_write(paths["markdown"], self.to_markdown())
        for path in self.plot(out):
            paths[path.stem] = path
        return paths


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_tasks(recipe: Any) -> list[Task]:
    """The recipe's ``tasks`` list, or one task made of its ``dataset_name``."""
    raw = recipe.data.tasks
    if not raw:
        return [Task("task1", recipe.data.dataset_name, recipe.data.eval_dataset_name,
                     recipe.data.dataset_train_split, recipe.data.dataset_test_split)]
    tasks = []
    for index, item in enumerate(raw, start=1):
        if isinstance(item, str):
            item = {"dataset_name": item}
        if not isinstance(item, dict) or "dataset_name" not in item:
            raise ValueError(f"tasks[{index - 1}] in recipe {recipe.path} must be a dataset name or a mapping with "
                             f"dataset_name (and optional name, eval_dataset_name, train_split, eval_split); got "
                             f"{item!r}.")
        unknown = set(item) - set(Task.__dataclass_fields__)
        if unknown:
            raise ValueError(f"tasks[{index - 1}] in recipe {recipe.path} has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(Task.__dataclass_fields__)}.")
        tasks.append(Task(**{"name": f"task{index}", **item}))
    return tasks


def run_comparison(
    recipe_path: str,
    arms: list[str],
    *,
    rounds: int | None = None,
    output_dir: str | os.PathLike[str] = "compare_out",
    overrides: list[str] | None = None,
) -> Comparison:
    """Run every arm of ``arms`` on the recipe and write the report; see the module docstring."""
    recipe = load_recipe(recipe_path, overrides or [])
    parsed = [parse_arm(a) for a in arms]
    if len({a.name for a in parsed}) != len(parsed):
        raise ArmSpecError(f"arms {arms} repeat a name; each arm must differ.")
    tasks = load_tasks(recipe)
    general_name = recipe.data.general_eval_dataset
    if not general_name:
        raise ValueError(f"recipe {recipe_path} sets no general_eval_dataset: the general data whose loss measures "
                         "forgetting (e.g. builtin:general with dataset_test_split eval).")
    general = load_text_dataset(general_name, recipe.data.general_eval_split, max_samples=recipe.data.max_eval_samples
                                or 256)
    out = Path(output_dir)
    records = []
    for arm in parsed:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", arm.name)
        record = run_arm(recipe, arm, tasks, general, rounds=rounds, output_dir=out / "runs" / safe)
        _atomic_write(out / f"arm-{safe}.json", json.dumps(asdict(record), indent=2))
        records.append(record)
    comparison = Comparison(records, meta={"recipe": recipe_path, "rounds": rounds or len(tasks),
                                           "tasks": [t.name for t in tasks], "general": general_name})
    comparison.save(out)
    return comparison


def merge_arm_files(paths: list[str | os.PathLike[str]], output_dir: str | os.PathLike[str]) -> Comparison:
    """Merge ``arm-*.json`` files written by separate ``--arm-only`` runs into one report."""
    records = []
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        records.append(ArmRecord(**{k: v for k, v in data.items() if k in ArmRecord.__dataclass_fields__}))
    comparison = Comparison(records, meta={"merged from": [str(p) for p in paths]})
    comparison.save(output_dir)
    return comparison
