"""Cost of distillation: step time and peak memory with each teacher, as ratios against plain fine-tuning.

    python benchmarks/distill.py            # ~2-4 minutes on 2 busy CPU cores
    python benchmarks/distill.py --quick    # a few seconds: smoke run, numbers not meaningful

Every configuration is trained through the real Trainer path (DistillationMixin on transformers.Trainer). Rounds
interleave the configurations, and each ratio is taken within a round (treatment / its baseline in the same round),
then the median over rounds is reported, so machine load drifting during the run cancels out as far as possible.

* Step time: wall time between ``on_step_begin`` and ``on_step_end`` (forward, backward, optimizer), the fastest of
  the timed steps after warm-up: on a shared 2-core VM other load only ever adds time (single steps of one run varied
  by up to 50%), so the minimum is the stable estimate of a step's own cost, as in ``timeit``.
* Peak memory: the largest total size of live tensor storages during one training step (forward + backward), counting
  the resident weights, gradients, optimizer state and any teacher. CPU has no allocator statistics, so tensors are
  tracked with a TorchDispatchMode; the number is what a GPU caching allocator would have to hold.

Baselines: a LoRA model without distillation for the PEFT ``base`` teacher (adapters disabled: one extra forward
without backward, no second copy), with and without gradient checkpointing (TRL's SFTConfig turns it on by default);
a full fine-tune without distillation for the ``snapshot`` teacher and the ``offline`` teacher (top-32 cache built
beforehand; its build time is reported separately).

Floor: the PEFT teacher's forward alone is timed on the same batch in every round; ``1 + forward / plain step`` is
the ratio an infinitely fast divergence would reach, so the printout separates the teacher's cost from ours.

The model is the shipped tiny Llama (4 layers, d=128, byte-level vocabulary of 259); ``--vocab 32000`` gives it a
Llama-2-sized vocabulary, where the LM head dominates both compute and memory (a head-heavy extreme: real LLMs sit
between the two).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages while active (plus the storages registered as already resident)."""

    def __init__(self, resident: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0
        for tensor in resident:
            self._add(tensor)
        self.peak = self.current

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if not ptr or not size:
            return
        known = self.live.get(ptr)
        if known is not None and not known[0].expired():
            return
        if known is not None:
            self.current -= known[1]
        self.live[ptr] = (StorageWeakRef(storage), size)
        self.current += size

    def _sweep(self) -> None:
        dead = [ptr for ptr, (ref, _) in self.live.items() if ref.expired()]
        for ptr in dead:
            self.current -= self.live.pop(ptr)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._add(item)
        if self.current > self.peak:
            self._sweep()  # only a candidate peak needs the exact live total
            self.peak = max(self.peak, self.current)
        return out


def build_classes():
    from transformers import Trainer, TrainerCallback

    from hf_retain.distill import DistillationMixin

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    class BenchTrainer(DistillationMixin, Trainer):
        measure_at_step = 2
        peak_bytes = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.state.global_step != self.measure_at_step:
                return super().training_step(model, inputs, num_items_in_batch)
            resident = [p for p in model.parameters()]
            resident += [p.grad for p in model.parameters() if p.grad is not None]
            resident += [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            if self._distill_teacher is not None:
                resident += list(self._distill_teacher.parameters()) + list(self._distill_teacher.buffers())
            with PeakTensorMemory(resident) as tracker:
                out = super().training_step(model, inputs, num_items_in_batch)
            self.peak_bytes = tracker.peak
            return out

    return BenchTrainer, StepTimer


def make_model(kind: str, vocab: int, layers: int):
    from hf_retain import build_tiny_model

    model = build_tiny_model(seed=0, num_hidden_layers=layers, vocab_size=vocab)
    if kind == "peft":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 lora_dropout=0.0))
    return model


def run_config(name: str, spec: dict[str, Any], data, steps: int, warmup: int, settings: dict[str, Any],
               workdir: str) -> dict[str, float]:
    from transformers import TrainingArguments

    from hf_retain import RetentionConfig

    bench_trainer, step_timer = build_classes()
    model = make_model(spec["model"], settings["vocab"], settings["layers"])
    timer = step_timer()
    args = TrainingArguments(os.path.join(workdir, name), max_steps=warmup + steps,
                             per_device_train_batch_size=settings["batch"], learning_rate=1e-4, report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                             gradient_checkpointing=spec.get("checkpointing", False),
                             gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = bench_trainer(model=model, args=args, train_dataset=data, callbacks=[timer],
                            retention=RetentionConfig(**spec["retention"]), data_collator=spec.get("collator"))
    trainer.measure_at_step = max(0, warmup - 1)  # the tracked (slowed) step is a warm-up step, never timed
    trainer.train()
    timed = timer.times[warmup:] or timer.times
    return {"time": min(timed), "memory": float(trainer.peak_bytes)}


def teacher_forward_seconds(data, settings: dict[str, Any], repeats: int = 5) -> float:
    """Time of the PEFT ``base`` teacher's forward alone (adapters off, no gradients) on one training batch:
    the cost the issue's target allows for ("one extra forward without backward"), hence the floor of the ratio."""
    from hf_retain.distill.teachers import TeacherMode, teacher_hidden_states

    model = make_model("peft", settings["vocab"], settings["layers"])
    batch = {"input_ids": torch.tensor(data["input_ids"][: settings["batch"]])}
    mode = TeacherMode(model, disable_adapters=True)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        teacher_hidden_states(model, batch, mode=mode)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds); numbers not meaningful")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--vocab", type=int, default=259,
                        help="vocabulary size: 259 is the shipped byte-level model (the transformer body dominates "
                             "compute, as in real LLMs); 32000 makes the LM head dominate (head-heavy regime)")
    opts = parser.parse_args(argv)

    from datasets import Dataset

    from hf_retain.distill import build_distill_cache

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    if opts.quick:
        settings = dict(vocab=512, layers=1, batch=4, seq=32, rows=16, steps=2, warmup=1, rounds=opts.rounds or 1)
    else:
        settings = dict(vocab=opts.vocab, layers=4, batch=8, seq=256, rows=64, steps=10, warmup=2,
                        rounds=opts.rounds or 5)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(3, settings["vocab"], (settings["rows"], settings["seq"]), generator=g).tolist()
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})

    workdir = tempfile.mkdtemp(prefix="hf_retain_bench_distill_")
    tokenizer = _Vocab(settings["vocab"])
    start = time.perf_counter()
    cache = build_distill_cache(make_model("full", settings["vocab"], settings["layers"]), rows,
                                os.path.join(workdir, "cache"), tokenizer=tokenizer, top_k=32, batch_size=8)
    cache_seconds = time.perf_counter() - start

    configs: dict[str, dict[str, Any]] = {
        "peft_plain": {"model": "peft", "retention": {}},
        "peft_base_teacher": {"model": "peft", "retention": {"distill_alpha": 1.0}},
        "peft_base_teacher_replay30": {"model": "peft", "collator": replay_collator(0.3), "retention": {
            "distill_alpha": 1.0, "distill_on": "replay", "replay_ratio": 0.3, "replay_dataset": "replay.jsonl"}},
        "peft_plain_ckpt": {"model": "peft", "checkpointing": True, "retention": {}},
        "peft_base_teacher_ckpt": {"model": "peft", "checkpointing": True, "retention": {"distill_alpha": 1.0}},
        "full_plain": {"model": "full", "retention": {}},
        "full_snapshot_teacher": {"model": "full", "retention": {"distill_alpha": 1.0}},
        "full_offline_teacher": {"model": "full", "retention": {"distill_alpha": 1.0, "distill_teacher": "offline",
                                                                "distill_teacher_path": cache}},
    }
    baselines = {"peft_base_teacher": "peft_plain", "peft_base_teacher_replay30": "peft_plain",
                 "peft_base_teacher_ckpt": "peft_plain_ckpt", "full_snapshot_teacher": "full_plain",
                 "full_offline_teacher": "full_plain"}
    ratios: dict[str, dict[str, list[float]]] = {k: {"time": [], "memory": []} for k in baselines}
    absolute: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    floors: list[float] = []
    for round_no in range(settings["rounds"]):
        order = list(configs) if round_no % 2 == 0 else list(reversed(configs))
        measured = {name: run_config(name, configs[name], data, settings["steps"], settings["warmup"], settings,
                                     workdir) for name in order}
        for name, value in measured.items():
            absolute[name].append(value)
        floors.append(1 + teacher_forward_seconds(data, settings) / measured["peft_plain"]["time"])
        for name, base in baselines.items():
            for key in ("time", "memory"):
                ratios[name][key].append(measured[name][key] / measured[base][key])

    print(f"distillation cost, {settings['rounds']} interleaved round(s); model: tiny Llama, {settings['layers']} "
          f"layers, vocab {settings['vocab']}; batch {settings['batch']} x {settings['seq']} tokens; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'configuration':28s} {'step ms':>9s} {'peak MiB':>9s}")
    for name, values in absolute.items():
        print(f"{name:28s} {1000 * statistics.median(v['time'] for v in values):9.1f} "
              f"{statistics.median(v['memory'] for v in values) / 2**20:9.1f}")
    print(f"\n{'ratio vs baseline (median, min-max over rounds)':48s} {'time':>16s} {'memory':>7s}  "
          "(targets for the PEFT base teacher: time <= 1.40, memory <= 1.05)")
    for name, base in baselines.items():
        times, m = ratios[name]["time"], statistics.median(ratios[name]["memory"])
        spread = f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"
        print(f"{name + ' / ' + base:48s} {spread:>16s} {m:7.3f}")
    print(f"\nfloor of peft_base_teacher / peft_plain: 1 + (teacher forward alone) / (plain step) = "
          f"{statistics.median(floors):.2f} ({min(floors):.2f}-{max(floors):.2f}); the divergence adds the rest")
    print(f"\noffline cache build (top-32, {settings['rows']} rows, one teacher pass): {cache_seconds:.1f} s")
    return 0


def replay_collator(share: float):
    """Collator marking the first ``share`` of each batch as replayed rows (what hf_retain's replay collator adds),
    so ``distill_on='replay'`` runs the teacher on those rows only: the recommended setup's cost."""
    from transformers import default_data_collator

    from hf_retain.mixin import REPLAY_MASK_KEY

    def collate(rows):
        batch = default_data_collator(rows)
        mask = torch.zeros(len(rows), dtype=torch.bool)
        mask[: max(1, round(share * len(rows)))] = True
        batch[REPLAY_MASK_KEY] = mask
        return batch

    return collate


class _Vocab:
    """Stand-in tokenizer for the random-token benchmark data: the cache fingerprints its vocabulary."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(self.size)}


if __name__ == "__main__":
    sys.exit(main())
