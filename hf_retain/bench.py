"""The retention benchmark: pretrain with optimizer P, fine-tune with optimizer F and each method, measure.

For every pretraining optimizer P (AdamW, Muon) the tiny model is pretrained on a *general* corpus; then, for every
fine-tuning optimizer F and method, it is fine-tuned on a *domain* corpus with identical data order, seed and
schedule. Forgetting is the rise of held-out general loss, learning the fall of held-out domain loss (nats per
token). The report lists every arm, its ratios to plain fine-tuning with the same P and F, the Pareto front, and
the P x F table, so users see whether optimizer consistency holds on *their* data, whatever the answer.

Corpora: the offline built-ins (standard-library prose and code) or any text files / datasets. Also
``python benchmarks/retention.py`` and ``hf-retain bench``.

Example:
    >>> from hf_retain.bench import BenchSettings, run_retention_benchmark
    >>> report = run_retention_benchmark("bench_out", BenchSettings.quick())   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from hf_retain.compare import Task, parse_arm, run_arm
from hf_retain.config import RetentionConfig
from hf_retain.data.corpora import write_builtin_corpora
from hf_retain.data.loading import load_text_dataset
from hf_retain.evaluation.report import ArmResult, RetentionReport
from hf_retain.pretrain import pretrained_tiny_model, training_recipe
from hf_retain.train import Recipe, run_recipe

logger = logging.getLogger(__name__)

__all__ = ["BenchSettings", "run_retention_benchmark", "pareto_front", "pretrained_tiny_model", "METHODS"]

# Method name -> the arm suffix (see hf_retain.compare.parse_arm). "replay+distill" distils the replayed rows only.
METHODS: dict[str, str] = {
    "plain": "",
    "ewc": "+ewc",
    "l2sp": "+l2sp",
    "distill": "+distill",
    "replay": "+replay",
    "replay+distill": "+replay+distill",
}
RECOMMENDED = "replay+distill"


@dataclass(frozen=True)
class BenchSettings:
    pretrain_optimizers: tuple[str, ...] = ("adamw", "muon")
    finetune_optimizers: tuple[str, ...] = ("adamw", "muon")
    methods: tuple[str, ...] = tuple(METHODS)
    pretrain_steps: int = 300
    finetune_steps: int = 150
    pretrain_lr: float = 2e-3
    finetune_lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 128
    eval_rows: int = 256
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchSettings:
        """Seconds, for CI smoke runs: numbers are not meaningful."""
        return cls(pretrain_optimizers=("adamw",), finetune_optimizers=("adamw", "muon"),
                   methods=("plain", "replay+distill"), pretrain_steps=8, finetune_steps=4, batch_size=4,
                   max_length=64, eval_rows=16)


def pareto_front(arms: list[ArmResult]) -> list[str]:
    """Names of the arms no other arm beats on both forgetting (lower) and learning (higher)."""
    front = []
    for arm in arms:
        dominated = any(
            other.forgetting <= arm.forgetting and other.learning >= arm.learning
            and (other.forgetting < arm.forgetting or other.learning > arm.learning)
            for other in arms if other is not arm
        )
        if not dominated:
            front.append(arm.name)
    return front


def _by_pretraining(arms: list[ArmResult], keys: dict[str, tuple[str, str, str]]) -> dict[str, list[ArmResult]]:
    """Arms grouped by pretraining optimizer: bases pretrained differently start from different losses, so a Pareto
    front is only meaningful within one base. One group (label "") when there is one base."""
    groups: dict[str, list[ArmResult]] = {}
    for arm in arms:
        groups.setdefault(keys[arm.name][0], []).append(arm)
    if len(groups) == 1:
        return {"": arms}
    return {f" (pretrained with {p})": group for p, group in groups.items()}


def _recipe(model: str, dataset: str, settings: BenchSettings, output_dir: Path, steps: int, lr: float,
            retention: RetentionConfig) -> Recipe:
    return training_recipe(model, dataset, output_dir, steps=steps, lr=lr, batch_size=settings.batch_size,
                           max_length=settings.max_length, seed=settings.seed, retention=retention)


def _pretrained_base(settings: BenchSettings, optimizer: str) -> Path:
    """The cached tiny model pretrained on the built-in general corpus as ``settings`` say."""
    return pretrained_tiny_model(optimizer, steps=settings.pretrain_steps, lr=settings.pretrain_lr,
                                 batch_size=settings.batch_size, max_length=settings.max_length, seed=settings.seed)


def _quiet_libraries() -> None:
    """Keep the training progress bar; drop the per-map and per-file bars of datasets and the hub."""
    import datasets
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)


def run_retention_benchmark(
    output_dir: str | os.PathLike[str],
    settings: BenchSettings | None = None,
    *,
    general_train: str | None = None,
    general_eval: str | None = None,
    domain_train: str | None = None,
    domain_eval: str | None = None,
    title: str = "hf_retain retention benchmark",
) -> RetentionReport:
    """Run the benchmark; corpora default to the offline built-ins. Writes ``report.{json,md,png}``.

    With the built-in general corpus, pretrained models are cached across runs (`pretrained_tiny_model`); with
    your own, they are pretrained into ``output_dir/pretrained``."""
    settings = settings or BenchSettings()
    _quiet_libraries()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_general = general_train is not None
    if not (general_train and domain_train):
        builtin = write_builtin_corpora(out / "data")
        general_train = general_train or str(builtin["general_train"])
        general_eval = general_eval or str(builtin["general_eval"])
        domain_train = domain_train or str(builtin["domain_train"])
        domain_eval = domain_eval or str(builtin["domain_eval"])
    if not general_eval:
        general_train, general_eval = _hold_out(general_train, out / "data", "general")
    if not domain_eval:
        domain_train, domain_eval = _hold_out(domain_train, out / "data", "domain")
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}.")
    general = load_text_dataset(general_eval or general_train, "train", max_samples=settings.eval_rows)
    domain_task = Task("domain", domain_train, domain_eval or domain_train, "train", "train")

    arms: list[ArmResult] = []
    one_pair = len(settings.pretrain_optimizers) == 1 and len(settings.finetune_optimizers) == 1
    keys: dict[str, tuple[str, str, str]] = {}  # arm name -> (pretraining optimizer, fine-tuning optimizer, method)
    for p_opt in settings.pretrain_optimizers:
        if own_general:
            base = _pretrain_on(general_train, p_opt, settings, out / "pretrained" / p_opt)
        else:
            base = _pretrained_base(settings, p_opt)
        for f_opt in settings.finetune_optimizers:
            for method in settings.methods:
                spec = f"{f_opt}{METHODS[method]}"
                name = method if one_pair else f"{p_opt}->{spec}"
                # The buffer only needs what the run can draw: about steps x batch x ratio / (1 - ratio) rows.
                capacity = max(256, settings.finetune_steps * settings.batch_size)
                base_retention = RetentionConfig(replay_dataset=general_train, replay_capacity=capacity,
                                                 consistency_policy="off", record_lineage=False)
                keys[name] = (p_opt, f_opt, method)
                run_dir = out / "runs" / f"{p_opt}-{spec}"
                recipe = _recipe(str(base), domain_train, settings, run_dir, settings.finetune_steps,
                                 settings.finetune_lr, base_retention)
                record = run_arm(recipe, parse_arm(spec), [domain_task], general, output_dir=run_dir,
                                 eval_rows=settings.eval_rows)
                arms.append(ArmResult(
                    name, record.general_losses[0], record.general_losses[1], record.task_losses[0][0],
                    record.task_losses[1][0], methods=record.methods, seconds=record.seconds[0],
                    steps=settings.finetune_steps,
                ))
    report = RetentionReport(arms, title=title, meta={
        "settings": json.dumps(asdict(settings)),
        "corpora": f"general={general_train}, domain={domain_train}",
    })
    for label, group in _by_pretraining(arms, keys).items():
        report.meta[f"pareto front{label}"] = ", ".join(pareto_front(group))
    report.meta["vs plain (same P and F)"] = "; ".join(_versus_plain(arms, keys))
    paths = report.save(out)
    if not one_pair:
        paths["markdown"].write_text(report.to_markdown() + "\n" + _pair_table(arms, keys, settings),
                                     encoding="utf-8")
    return report


def _pretrain_on(general_train: str, optimizer: str, settings: BenchSettings, target: Path) -> Path:
    if not (target / "model.safetensors").is_file():
        retention = RetentionConfig(optimizer=optimizer, consistency_policy="off", record_lineage=True)
        run_recipe(_recipe("builtin:tiny-llama-init", general_train, settings, target, settings.pretrain_steps,
                           settings.pretrain_lr, retention))
    return target


def _hold_out(name: str, out: Path, tag: str, fraction: float = 0.1) -> tuple[str, str]:
    """Split one corpus into train and held-out JSONL files (10% held out, fixed seed)."""
    dataset = load_text_dataset(name)
    if "text" not in dataset.column_names:
        raise ValueError(f"{name} has columns {dataset.column_names}; the benchmark needs a 'text' column.")
    if len(dataset) < 20:
        raise ValueError(f"{name} has {len(dataset)} rows; the benchmark needs at least 20 to hold some out.")
    split = dataset.select_columns(["text"]).train_test_split(test_size=fraction, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in ("train", "test"):
        path = out / f"{tag}_{part}.jsonl"
        split[part].to_json(str(path), lines=True)
        paths.append(str(path))
    return paths[0], paths[1]


def _versus_plain(arms: list[ArmResult], keys: dict[str, tuple[str, str, str]]) -> list[str]:
    """Each method's forgetting and learning as fractions of plain fine-tuning's with the same P and F."""
    plain = {keys[a.name][:2]: a for a in arms if keys[a.name][2] == "plain"}
    lines = []
    for arm in arms:
        reference = plain.get(keys[arm.name][:2])
        if reference is None or reference is arm or reference.forgetting <= 0 or reference.learning <= 0:
            continue
        lines.append(f"{arm.name}: forgetting x{arm.forgetting / reference.forgetting:.2f}, "
                     f"learning x{arm.learning / reference.learning:.2f}")
    return lines


def _pair_table(arms: list[ArmResult], keys: dict[str, tuple[str, str, str]], settings: BenchSettings) -> str:
    """Plain fine-tuning's forgetting / learning for each pretraining x fine-tuning optimizer pair."""
    plain = {keys[a.name][:2]: a for a in arms if keys[a.name][2] == "plain"}
    lines = ["## Optimizer pairs (plain fine-tuning): forgetting / learning", "",
             "| pretrained with \\ fine-tuned with | " + " | ".join(settings.finetune_optimizers) + " |",
             "|---" * (len(settings.finetune_optimizers) + 1) + "|"]
    for p_opt in settings.pretrain_optimizers:
        cells = []
        for f_opt in settings.finetune_optimizers:
            arm = plain.get((p_opt, f_opt))
            cells.append(f"{arm.forgetting:+.3f} / {arm.learning:+.3f}" if arm else "-")
        lines.append(f"| {p_opt} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def settings_from_args(args: Any) -> BenchSettings:
    base = BenchSettings.quick() if args.quick else BenchSettings()
    overrides = {k: getattr(args, k) for k in ("pretrain_steps", "finetune_steps", "seed")
                 if getattr(args, k, None) is not None}
    for key in ("pretrain_optimizers", "finetune_optimizers", "methods"):
        value = getattr(args, key, None)
        if value:
            overrides[key] = tuple(value)
    return replace(base, **overrides)
