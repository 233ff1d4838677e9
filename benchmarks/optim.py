"""Muon (hf_retain's MuonWithAdamW) vs AdamW on CPU: step time and memory, as ratios measured in one run.

For each model (the tiny Llama, and a ~50M-parameter Llama config), both optimizers train their own copy of the
model on the same batches, *interleaved* step by step, so machine load hits both alike; we report the median
time of a full training step (forward + backward + optimizer step) and of the optimizer step alone. Memory:
the optimizer state each keeps (exact bytes), and each optimizer's peak resident memory (VmHWM) in a fresh
process doing the same steps, against a process doing forward/backward only.

    python benchmarks/optim.py            # tiny + 50M: ~5 minutes on one busy core (Muon's 50M step is slow)
    python benchmarks/optim.py --quick    # tiny only, a few steps, no memory subprocesses (seconds)
    python benchmarks/optim.py --json out.json

Moonlight reports a small end-to-end overhead for Muon at scale. Newton-Schulz costs a fixed number of FLOPs per
step (set by the matrix shapes) while forward/backward grows with tokens per step; with the few hundred tokens per
step of a CPU benchmark the orthogonalisation dominates. The benchmark prints both FLOP counts and the tokens per
step at which Newton-Schulz drops under 5% of a step, so the CPU ratio can be read for a real batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# ~50M parameters: 32k vocab x 512 tied embedding (16.4M) + 10 layers x 3.4M.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "llama-50m": dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=10,
                      num_attention_heads=8, num_key_value_heads=8),
}
OPTIMIZERS = {"adamw": dict(lr=1e-3, weight_decay=0.1), "muon": dict(lr=1e-3, weight_decay=0.1)}


def build(model_name: str, seed: int = 0):
    from hf_retain.assets import build_tiny_model

    return build_tiny_model(seed=seed, **MODELS[model_name])


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


def batches(vocab: int, n: int, batch: int, length: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (batch, length), generator=gen) for _ in range(n)]


def timed_step(model, optimizer, ids) -> tuple[float, float]:
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    opt_start = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return end - start, end - opt_start


def compare(model_name: str, steps: int, batch: int, length: int) -> dict[str, Any]:
    """Interleaved timing of both optimizers on twin models."""
    from hf_retain.optim import create_optimizer

    runs = {}
    for name, kwargs in OPTIMIZERS.items():
        model = build(model_name)
        runs[name] = {"model": model, "opt": create_optimizer(model, name, **kwargs), "step": [], "opt_step": []}
    vocab = runs["adamw"]["model"].config.vocab_size
    n_params = sum(p.numel() for p in runs["adamw"]["model"].parameters())
    data = batches(vocab, steps + 1, batch, length)
    for i, ids in enumerate(data):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for name in order:
            total, opt_only = timed_step(runs[name]["model"], runs[name]["opt"], ids)
            if i > 0:  # step 0 allocates state and warms caches
                runs[name]["step"].append(total)
                runs[name]["opt_step"].append(opt_only)
    out: dict[str, Any] = {"model": model_name, "params": n_params, "steps": steps, "batch": [batch, length]}
    for name, run in runs.items():
        out[name] = {"step_s": statistics.median(run["step"]), "opt_step_s": statistics.median(run["opt_step"]),
                     "state_mb": state_bytes(run["opt"]) / 2**20}
    out.update(flops(runs["muon"]["model"], batch * length))
    out["ratio_step"] = out["muon"]["step_s"] / out["adamw"]["step_s"]
    out["ratio_opt_step"] = out["muon"]["opt_step_s"] / out["adamw"]["opt_step_s"]
    out["ratio_state"] = out["muon"]["state_mb"] / out["adamw"]["state_mb"]
    return out


def flops(model, tokens: int, ns_steps: int = 5) -> dict[str, float]:
    """Why Muon costs what it costs: Newton-Schulz FLOPs per step are fixed by the matrix shapes, while forward +
    backward FLOPs (~6 x params x tokens) grow with the batch; the ratio says how many tokens per step make the
    orthogonalisation cheap."""
    from hf_retain.optim import split_params_for_muon

    ns = 0.0
    for _, p in split_params_for_muon(model).muon:
        m, n = sorted(p.shape)
        ns += ns_steps * (2 * m * m * n + 2 * m * m * m + 2 * m * m * n)  # X X^T, A A, B X
    fwd_bwd = 6.0 * sum(p.numel() for p in model.parameters()) * tokens
    return {"ns_gflop": ns / 1e9, "fwd_bwd_gflop": fwd_bwd / 1e9,
            "tokens_for_5pct_ns": int(ns / (0.05 * 6.0 * sum(p.numel() for p in model.parameters())))}


def peak_rss_child(model_name: str, optimizer: str, steps: int, batch: int, length: int) -> float:
    """Peak resident memory (MiB) of a fresh process doing ``steps`` steps ('none': forward/backward only)."""
    cmd = [sys.executable, __file__, "--child", model_name, optimizer, str(steps), str(batch), str(length)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PEAK_KB "))
    return int(line.split()[1]) / 1024


def child(model_name: str, optimizer: str, steps: int, batch: int, length: int) -> None:
    from hf_retain.optim import create_optimizer

    model = build(model_name)
    opt = None if optimizer == "none" else create_optimizer(model, optimizer, **OPTIMIZERS[optimizer])
    for ids in batches(model.config.vocab_size, steps, batch, length):
        model(input_ids=ids, labels=ids).loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)
    with open("/proc/self/status", encoding="ascii") as status:
        peak = next(line for line in status if line.startswith("VmHWM:")).split()[1]
    print(f"PEAK_KB {peak}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps, no memory subprocesses")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model_name, optimizer, steps, batch, length = args.child
        child(model_name, optimizer, int(steps), int(batch), int(length))
        return 0
    torch.manual_seed(0)
    plan = [("tiny", 3, 4, 64)] if args.quick else [("tiny", 12, 8, 128), ("llama-50m", 3, 4, 128)]
    results = []
    for model_name, steps, batch, length in plan:
        row = compare(model_name, steps, batch, length)
        if not args.quick:
            mem_steps = 2
            base = peak_rss_child(model_name, "none", mem_steps, batch, length)
            for name in OPTIMIZERS:
                peak = peak_rss_child(model_name, name, mem_steps, batch, length)
                row[name].update(peak_rss_mb=peak, optimizer_rss_mb=peak - base)
            row["fwd_bwd_peak_rss_mb"] = base
            row["ratio_peak_rss"] = row["muon"]["peak_rss_mb"] / row["adamw"]["peak_rss_mb"]
        results.append(row)
    print(f"threads={torch.get_num_threads()}  (CPU; other jobs share the machine, so read the ratios)")
    print(f"{'model':<10} {'params':>7} {'opt':<6} {'step ms':>9} {'opt.step ms':>12} {'state MiB':>10} "
          f"{'peak RSS MiB':>13}")
    for row in results:
        for name in OPTIMIZERS:
            r = row[name]
            print(f"{row['model']:<10} {row['params'] / 1e6:>6.1f}M {name:<6} {r['step_s'] * 1e3:>9.1f} "
                  f"{r['opt_step_s'] * 1e3:>12.2f} {r['state_mb']:>10.1f} {r.get('peak_rss_mb', float('nan')):>13.0f}")
        extra = f", peak RSS x{row['ratio_peak_rss']:.3f}" if "ratio_peak_rss" in row else ""
        print(f"{row['model']:<10} muon/adamw: step x{row['ratio_step']:.3f}, optimizer step "
              f"x{row['ratio_opt_step']:.2f}, optimizer state x{row['ratio_state']:.3f}{extra}")
        print(f"{'':<10} Newton-Schulz {row['ns_gflop']:.1f} GFLOP/step vs forward+backward "
              f"{row['fwd_bwd_gflop']:.1f} GFLOP at {row['batch'][0] * row['batch'][1]} tokens/step; NS falls "
              f"under 5% of the step's FLOPs from ~{row['tokens_for_5pct_ns']:,} tokens/step")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
