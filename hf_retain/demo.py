"""`hf-retain demo`: the whole story on the embedded tiny model, offline, in a few minutes on 2 CPU cores.

1. Pretrain the tiny byte-level Llama on the *general* corpus (standard-library prose) with AdamW; the lineage
   callback records that optimizer in its model card. The result is cached (it is also ``builtin:tiny-llama``).
2. Fine-tune it on the *domain* corpus (standard-library code) plainly and with each demo arm, every arm with the
   same data order, seed and schedule.
3. Print a retention report (general and domain loss before/after, forgetting and learning) and write it as JSON,
   markdown and a PNG plot.

The demo is the retention benchmark (`hf_retain.bench`) restricted to AdamW and the demo's arms, and every stage
goes through `hf_retain.train.run_recipe`, the same path as `hf-retain train RECIPE`.

Example:
    >>> from hf_retain.demo import run_demo
    >>> report = run_demo("demo_out", quick=True)   # doctest: +SKIP
    >>> print(report.table())                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import replace

from hf_retain.bench import BenchSettings, run_retention_benchmark
from hf_retain.evaluation.report import RetentionReport

__all__ = ["DEMO_METHODS", "demo_settings", "run_demo"]

# Plain fine-tuning first (the reference), then the recommended mix: 30% replay + distillation on replayed rows.
DEMO_METHODS = ("plain", "replay", "replay+distill")


def demo_settings(quick: bool = False) -> BenchSettings:
    base = BenchSettings.quick() if quick else BenchSettings()
    return replace(base, pretrain_optimizers=("adamw",), finetune_optimizers=("adamw",), methods=DEMO_METHODS)


def run_demo(output_dir: str | os.PathLike[str] = "hf_retain_demo", *, quick: bool = False) -> RetentionReport:
    """Run the demo and write ``report.{json,md,png}`` into ``output_dir``; returns the report."""
    settings = demo_settings(quick)
    return run_retention_benchmark(
        output_dir, settings,
        title=f"hf_retain demo: tiny model pretrained on prose ({settings.pretrain_steps} steps, AdamW), "
              f"fine-tuned on code ({settings.finetune_steps} steps)",
    )
