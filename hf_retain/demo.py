"""`hf-retain demo`: the whole story on the embedded tiny model, offline, in a few minutes on 2 CPU cores.

1. Pretrain the tiny byte-level Llama on the *general* corpus (standard-library prose) with AdamW; the lineage
   callback records that optimizer in its model card.
2. Fine-tune it on the *domain* corpus (standard-library code) once plainly and once per retention arm, every arm
   with the same data order, seed and schedule.
3. Print a retention report (general and domain loss before/after, forgetting and learning) and write it as JSON,
   markdown and a PNG plot.

Every stage goes through `hf_retain.train.run_recipe`, the same path as `hf-retain train RECIPE`.

Example:
    >>> from hf_retain.demo import run_demo
    >>> report = run_demo("demo_out", quick=True)   # doctest: +SKIP
    >>> print(report.table())                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_retain.config import RetentionConfig
from hf_retain.data.corpora import cache_dir, write_builtin_corpora
from hf_retain.evaluation.loss import evaluate_loss
from hf_retain.evaluation.report import ArmResult, RetentionReport

logger = logging.getLogger(__name__)

__all__ = ["DemoSettings", "run_demo", "pretrained_tiny_model", "demo_arms"]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; `quick` is for tests and smoke runs (seconds, numbers not meaningful)."""

    pretrain_steps: int = 400
    pretrain_lr: float = 2e-3
    finetune_steps: int = 150
    finetune_lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 128
    eval_rows: int = 256
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(pretrain_steps=20, finetune_steps=10, batch_size=8, max_length=64, eval_rows=32)


def _training_args(output_dir: Path, steps: int, lr: float, settings: DemoSettings, **overrides: Any):
    from trl import SFTConfig

    values: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), per_device_train_batch_size=settings.batch_size,
        max_length=settings.max_length, weight_decay=0.0, logging_steps=max(1, steps // 5), save_strategy="no",
        report_to=[], seed=settings.seed, data_seed=settings.seed, use_cpu=True, dataloader_num_workers=0,
        optim="adamw_torch", disable_tqdm=False,
    )
    values.update(overrides)
    return SFTConfig(**values)


def _recipe(model: str, dataset: str, training: Any, retention: RetentionConfig):
    from trl import ModelConfig

    from hf_retain.train import DataArguments, Recipe

    # Only the rows the run can consume are tokenised: steps x batch.
    rows = training.max_steps * training.per_device_train_batch_size
    data = DataArguments(dataset_name=dataset, max_train_samples=rows)
    return Recipe(model=ModelConfig(model_name_or_path=model), data=data, training=training, retention=retention,
                  path="<demo>")


def _quiet_libraries() -> None:
    """Keep the training progress bar; drop the per-map and per-file bars of datasets and the hub."""
    import datasets
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)


def pretrained_tiny_model(settings: DemoSettings | None = None, *, corpus_dir: Path | None = None) -> Path:
    """The tiny model pretrained on the general corpus with AdamW, built once and cached (``builtin:tiny-llama``)."""
    settings = settings or DemoSettings()
    target = cache_dir() / f"tiny-llama-general-s{settings.pretrain_steps}-lr{settings.pretrain_lr:g}-" \
                           f"b{settings.batch_size}x{settings.max_length}-seed{settings.seed}"
    if (target / "model.safetensors").is_file():
        return target
    from hf_retain.train import run_recipe

    corpus_dir = corpus_dir or Path(write_builtin_corpora(cache_dir() / "corpora" / "jsonl")["general_train"]).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    training = _training_args(staging, settings.pretrain_steps, settings.pretrain_lr, settings)
    # The pretraining run is not a fine-tune: nothing to check for consistency, but its lineage is recorded.
    retention = RetentionConfig(consistency_policy="off", record_lineage=True)
    logger.info("pretraining the tiny model on the general corpus for %d steps", settings.pretrain_steps)
    run_recipe(_recipe("builtin:tiny-llama-init", str(corpus_dir / "general_train.jsonl"), training, retention))
    if (target / "model.safetensors").is_file():  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def demo_arms(replay_dataset: str) -> dict[str, RetentionConfig]:
    """The arms the demo compares: plain fine-tuning, then each available retention method and the recommended mix."""
    return {
        "plain": RetentionConfig(),
        "recommended": RetentionConfig.recommended(replay_dataset=replay_dataset),
    }


def run_demo(
    output_dir: str | os.PathLike[str] = "hf_retain_demo",
    *,
    quick: bool = False,
    settings: DemoSettings | None = None,
    arms: dict[str, RetentionConfig] | None = None,
) -> RetentionReport:
    """Run the demo and write ``report.{json,md,png}`` into ``output_dir``; returns the report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_retain.train import run_recipe

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    _quiet_libraries()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpora = write_builtin_corpora(out / "data")
    started = time.perf_counter()
    base = pretrained_tiny_model(settings, corpus_dir=corpora["general_train"].parent)
    pretrain_seconds = time.perf_counter() - started

    tokenizer = AutoTokenizer.from_pretrained(base)
    general_eval = _texts(corpora["general_eval"])[: settings.eval_rows]
    domain_eval = _texts(corpora["domain_eval"])[: settings.eval_rows]

    def losses(model: Any) -> tuple[float, float]:
        return (evaluate_loss(model, general_eval, tokenizer, max_length=settings.max_length),
                evaluate_loss(model, domain_eval, tokenizer, max_length=settings.max_length))

    general_before, domain_before = losses(AutoModelForCausalLM.from_pretrained(base))
    results = []
    for name, retention in (arms or demo_arms(str(corpora["general_train"]))).items():
        logger.info("fine-tuning arm %r on the domain corpus (%s)", name, ", ".join(retention.methods) or "plain")
        training = _training_args(out / "runs" / name, settings.finetune_steps, settings.finetune_lr, settings)
        started = time.perf_counter()
        trainer = run_recipe(_recipe(str(base), str(corpora["domain_train"]), training, retention))
        seconds = time.perf_counter() - started
        general_after, domain_after = losses(trainer.model)
        results.append(ArmResult(name, general_before, general_after, domain_before, domain_after,
                                 methods=retention.methods, seconds=round(seconds, 2), steps=trainer.state.global_step))
    report = RetentionReport(
        results, title="hf_retain demo: fine-tuning the tiny model from prose to code",
        meta={"base model": f"tiny byte-level Llama pretrained {settings.pretrain_steps} steps with AdamW",
              "fine-tune": f"{settings.finetune_steps} steps, lr {settings.finetune_lr:g}, batch "
                           f"{settings.batch_size}x{settings.max_length} tokens",
              "pretraining seconds (0 when cached)": round(pretrain_seconds, 1)},
    )
    report.save(out)
    return report


def _texts(path: Path) -> list[str]:
    import json

    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]
