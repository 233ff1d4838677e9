"""``builtin:tiny-llama``: the tiny model pretrained on the built-in general corpus, built once per machine.

The demo, the benchmark and every shipped recipe start from this model. It is trained here (a few hundred steps
on 2 CPU cores, about a minute) the first time it is asked for and cached under `hf_retain.data.corpora.cache_dir()`;
later runs load it. Building is guarded by a file lock and published with one atomic rename, so processes started
together (``accelerate launch --num_processes N`` on a cold cache) build it once: the first takes the lock and
trains in a fresh single-process interpreter, the others wait and then load the same files.

The resolver is registered through the ``hf_retain.models`` entry point, so `hf_retain.models` can load
``builtin:tiny-llama`` without importing this module's training code.

Example:
    >>> from hf_retain.pretrain import pretrained_tiny_model
    >>> path = pretrained_tiny_model(steps=300)                   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from hf_retain.assets import TINY_LLAMA_DIR
from hf_retain.config import RetentionConfig
from hf_retain.data.corpora import cache_dir, write_builtin_corpora
from hf_retain.distributed import launched_world_size
from hf_retain.models import ModelResolver
from hf_retain.train import DataArguments, Recipe, run_recipe

logger = logging.getLogger(__name__)

__all__ = ["TINY_LLAMA", "pretrained_tiny_model", "training_recipe"]

# Hours: a cold build takes about a minute on 2 cores; a waiting process gives up only when the builder is gone.
_LOCK_TIMEOUT_S = 3 * 3600


def training_recipe(model: str, dataset: str, output_dir: str | os.PathLike[str], *, steps: int, lr: float,
                    batch_size: int, max_length: int, seed: int, retention: RetentionConfig) -> Recipe:
    """A CPU-friendly recipe for the tiny model (cosine schedule, no bf16, no checkpointing, nothing saved midway)."""
    from trl import ModelConfig, SFTConfig

    training = SFTConfig(
        output_dir=str(output_dir), max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), per_device_train_batch_size=batch_size, max_length=max_length,
        weight_decay=0.0, logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], seed=seed,
        data_seed=seed, use_cpu=True, optim="adamw_torch", disable_tqdm=False,
        # SFTConfig turns both on by default; on a CPU and a 0.9M-parameter model they make each step ~3x slower
        # (bf16 autocast is emulated, checkpointing recomputes the forward) and bf16 changes the numbers.
        bf16=False, gradient_checkpointing=False,
    )
    data = DataArguments(dataset_name=dataset, max_train_samples=steps * batch_size)
    return Recipe(model=ModelConfig(model_name_or_path=model), data=data, training=training, retention=retention,
                  path="<pretrain>")


def _target(optimizer: str, steps: int, lr: float, batch_size: int, max_length: int, seed: int) -> Path:
    return cache_dir() / (f"tiny-llama-general-{optimizer}-s{steps}-lr{lr:g}-b{batch_size}x{max_length}-"
                          f"seed{seed}")


def pretrained_tiny_model(optimizer: str = "adamw", *, steps: int = 300, lr: float = 2e-3, batch_size: int = 16,
                          max_length: int = 128, seed: int = 0) -> Path:
    """The folder of the tiny model pretrained on the built-in general corpus with ``optimizer``; built on first
    use, once per machine. Its model card records the optimizer (lineage)."""
    settings = dict(steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed)
    target = _target(optimizer, **settings)
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=_LOCK_TIMEOUT_S):
        if (target / "model.safetensors").is_file():  # another process built it while this one waited
            return target
        logger.info("pretraining the tiny model on the general corpus with %s for %d steps (cached for later runs)",
                    optimizer, steps)
        if launched_world_size() > 1:
            _build_in_subprocess(optimizer, settings)
        else:
            _build(optimizer, target, **settings)
    return target


def _build(optimizer: str, target: Path, *, steps: int, lr: float, batch_size: int, max_length: int,
           seed: int) -> None:
    """Train into a staging folder beside ``target``, then rename it into place (readers never see half a model)."""
    general_train = write_builtin_corpora(cache_dir() / "corpora" / "jsonl")["general_train"]
    if target.exists():  # a folder without weights: left by a build that did not publish atomically
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        # Pretraining is not a fine-tune: nothing to check for consistency, but its lineage is recorded.
        retention = RetentionConfig(optimizer=optimizer, consistency_policy="off", record_lineage=True)
        run_recipe(training_recipe("builtin:tiny-llama-init", str(general_train), staging, steps=steps, lr=lr,
                                   batch_size=batch_size, max_length=max_length, seed=seed, retention=retention))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                       "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _build_in_subprocess(optimizer: str, settings: dict[str, Any]) -> None:
    """Under a multi-process launch the build must not join the launch's process group: train in a fresh
    interpreter with the launcher's variables removed."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCHER_VARIABLES and not k.startswith(("ACCELERATE_", "FSDP_", "DEEPSPEED_"))}
    command = [sys.executable, "-m", "hf_retain.pretrain", "--optimizer", optimizer,
               *(f"--{key}={value}" for key, value in settings.items())]
    subprocess.run(command, env=env, check=True)


TINY_LLAMA = ModelResolver(
    "tiny-llama", path=pretrained_tiny_model, tokenizer=TINY_LLAMA_DIR,
    description="the tiny byte-level Llama pretrained 300 steps with AdamW on the built-in general corpus",
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_retain.pretrain``: build one pretrained tiny model (what a launched process runs)."""
    parser = argparse.ArgumentParser(prog="python -m hf_retain.pretrain", description=main.__doc__)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = vars(parser.parse_args(argv))
    optimizer = args.pop("optimizer")
    target = _target(optimizer, **args)
    if not (target / "model.safetensors").is_file():  # the caller holds the lock
        target.parent.mkdir(parents=True, exist_ok=True)
        _build(optimizer, target, **args)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
