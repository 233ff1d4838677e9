"""Cost of the replay collator: collation throughput and training step time, with vs without replay, at equal
batch size (the baseline collates 32 training rows; the replay run collates 24 training rows + 8 replay rows, i.e.
``ratio=0.25``, so both batches have 32 rows of the same length distribution).

Baseline and treatment are interleaved round by round inside one run and the ratio is taken per round, then the
median over rounds, so load from other processes affects both sides alike.

    python benchmarks/replay.py            # full: 400 collations x 5 rounds, 30 train steps x 5 rounds (4-layer model)
    python benchmarks/replay.py --quick    # seconds (1-layer model, small buffer); the tests smoke-run it
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from hf_retain import ReplayBuffer, ReplayCollator, build_tiny_model

BATCH, BASE_ROWS, RATIO = 32, 24, 0.25  # 24 / (1 - 0.25) = 32 rows: replay adds exactly 8


def make_rows(n: int, seed: int, min_len: int = 64, max_len: int = 128) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rnd.randrange(3, 259) for _ in range(rnd.randint(min_len, max_len))]
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def collator_throughput(rounds: int, batches: int, buffer_rows: int) -> dict[str, float]:
    base = DataCollatorForLanguageModeling(pad_token_id=0)
    buffer = ReplayBuffer.from_dataset(make_rows(buffer_rows, seed=1), seed=0)
    replay = ReplayCollator(base, buffer, ratio=RATIO, seed=0)
    train = make_rows(BATCH * batches, seed=2)
    ratios, base_rates, replay_rates = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(batches):
            base(train[i * BATCH:(i + 1) * BATCH])
        t_base = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(batches):
            replay(train[i * BATCH:i * BATCH + BASE_ROWS])
        t_replay = time.perf_counter() - start
        ratios.append(t_replay / t_base)
        base_rates.append(BATCH * batches / t_base)
        replay_rates.append(BATCH * batches / t_replay)
    assert replay.stats["replay_examples"] == 8 * batches * rounds
    return {"collate_time_ratio": statistics.median(ratios), "base_examples_per_s": statistics.median(base_rates),
            "replay_examples_per_s": statistics.median(replay_rates)}


def step_time(rounds: int, steps: int, buffer_rows: int, layers: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_tiny_model(seed=0, num_hidden_layers=layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base = DataCollatorForLanguageModeling(pad_token_id=0)
    buffer = ReplayBuffer.from_dataset(make_rows(buffer_rows, seed=1), seed=0)
    replay = ReplayCollator(base, buffer, ratio=RATIO, seed=0)
    train = make_rows(BATCH * steps * rounds, seed=3)

    def step(batch: dict) -> None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(base(train[:BATCH]))  # warm-up
    ratios, t_bases, t_replays = [], [], []
    for r in range(rounds):
        t_base = t_replay = 0.0
        for s in range(steps):
            rows = train[(r * steps + s) * BATCH:(r * steps + s + 1) * BATCH]
            start = time.perf_counter()
            step(base(rows))  # baseline: collation + step on 32 training rows
            t_base += time.perf_counter() - start
            start = time.perf_counter()
            step(replay(rows[:BASE_ROWS]))  # replay: collation + step on 24 training + 8 replay rows
            t_replay += time.perf_counter() - start
        ratios.append(t_replay / t_base)
        t_bases.append(t_base / steps)
        t_replays.append(t_replay / steps)
    return {"step_time_ratio": statistics.median(ratios), "base_step_s": statistics.median(t_bases),
            "replay_step_s": statistics.median(t_replays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 2 if args.quick else 5
    buffer_rows = 500 if args.quick else 10_000
    results = {**collator_throughput(rounds, 20 if args.quick else 400, buffer_rows),
               **step_time(rounds, 1 if args.quick else 30, buffer_rows, 1 if args.quick else 4)}
    if args.json:
        print(json.dumps(results))
        return
    print(f"collator  baseline {results['base_examples_per_s']:9.0f} examples/s   replay "
          f"{results['replay_examples_per_s']:9.0f} examples/s   time ratio {results['collate_time_ratio']:.3f}")
    print(f"train step baseline {results['base_step_s'] * 1e3:8.1f} ms         replay "
          f"{results['replay_step_s'] * 1e3:8.1f} ms         time ratio {results['step_time_ratio']:.3f} "
          "(target <= 1.02)")


if __name__ == "__main__":
    main()
