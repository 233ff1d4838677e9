"""Cost of the regression guard: evaluation time as a share of training wall time, at the default cadence
(``every_n_steps=500``) on a demo-sized fine-tune (4-layer tiny model, batch 16 x 128 tokens, 150 steps, general
held-out loss on 256 rows as the guarded benchmark, as in `hf-retain demo`).

Three numbers, from one run with plain and guarded fine-tunes interleaved round by round:

* ``steady_share``: one suite evaluation / (500 training steps + that evaluation): the share of wall time the guard
  costs in a long run at the default cadence;
* ``demo_share``: the guard's own evaluation seconds in a 150-step demo fine-tune (baseline before step 1 plus the
  check at train end, since 150 < 500) / that run's wall time;
* ``wall_ratio``: guarded / plain wall time of the same 150-step fine-tune (noisier: includes everything).

    python benchmarks/evaluation.py            # full: 3 rounds of 2 x 150 steps (a few minutes on 2 cores)
    python benchmarks/evaluation.py --quick    # seconds (2-layer model, 8 steps); the tests smoke-run it
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import build_tiny_model, builtin_corpora, load_tiny_tokenizer
from hf_retain.callbacks.regression import RegressionEarlyStoppingCallback
from hf_retain.evaluation.evaluators import LossEvaluator
from hf_retain.evaluation.suite import RetentionSuite


def tokenised_rows(texts: list[str], tok, max_length: int, count: int) -> Dataset:
    """Fixed-length training rows cut from the domain corpus (same shapes as the demo's packed batches)."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= max_length * count:
            break
    rows = [stream[i * max_length:(i + 1) * max_length] for i in range(len(stream) // max_length)][:count]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def fine_tune(dataset: Dataset, tok, steps: int, batch: int, layers: int, guard=None) -> float:
    model = build_tiny_model(seed=0, num_hidden_layers=layers)
    args = TrainingArguments(output_dir="/tmp/hf_retain_bench_eval", max_steps=steps, learning_rate=1e-3,
                             per_device_train_batch_size=batch, report_to=[], logging_steps=10_000,
                             save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                      callbacks=[guard] if guard else None)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes (seconds; numbers not meaningful)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    logging.getLogger("hf_retain").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.quick:
        steps, batch, max_length, eval_rows, layers, rounds = 8, 4, 64, 16, 2, args.rounds or 1
    else:
        steps, batch, max_length, eval_rows, layers, rounds = 150, 16, 128, 256, 4, args.rounds or 3
    cadence = 500  # the default every_n_steps
    tok = load_tiny_tokenizer()
    corpora = builtin_corpora()
    dataset = tokenised_rows(corpora["domain"]["train"], tok, max_length, steps * batch)
    general = corpora["general"]["eval"][:eval_rows]

    plain_times, guarded_times, demo_shares, eval_times = [], [], [], []
    for _ in range(rounds):
        plain_times.append(fine_tune(dataset, tok, steps, batch, layers))
        suite = RetentionSuite([LossEvaluator(general, name="general", max_length=max_length)])
        guard = RegressionEarlyStoppingCallback(suite, every_n_steps=cadence, action="rollback")
        guarded = fine_tune(dataset, tok, steps, batch, layers, guard)
        guarded_times.append(guarded)
        evals = [guard.baseline["results"][0]["seconds"]] + [h["seconds"] for h in guard.history]
        eval_times.extend(evals)
        demo_shares.append(sum(evals) / guarded)
    step_seconds = statistics.median(plain_times) / steps
    one_eval = statistics.median(eval_times)
    result = {
        "steps": steps, "batch": f"{batch}x{max_length}", "layers": layers, "eval_rows": len(general),
        "cadence": cadence, "rounds": rounds,
        "train_step_seconds": round(step_seconds, 4),
        "one_evaluation_seconds": round(one_eval, 3),
        "evaluation_in_train_steps": round(one_eval / step_seconds, 2),
        "steady_share": round(one_eval / (cadence * step_seconds + one_eval), 4),
        "demo_share": round(statistics.median(demo_shares), 4),
        "wall_ratio": round(statistics.median(g / p for g, p in zip(guarded_times, plain_times)), 4),
        "evaluations_per_demo_run": len(eval_times) // rounds,
        "target_share": 0.05,
    }
    print(json.dumps(result, indent=2))
    print(f"\nguard overhead at every_n_steps={cadence}: {100 * result['steady_share']:.2f}% of wall time in a long "
          f"run; {100 * result['demo_share']:.1f}% in a {steps}-step demo run (baseline + end check); "
          f"guarded/plain wall time {result['wall_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
