"""EWC costs and benefit, each measured against a baseline in the same run.

* penalty overhead: training step time (forward, backward, AdamW) with the EWC penalty / without, on a ~50M
  parameter byte-level Llama on CPU (target <= 1.05);
* Fisher throughput: samples/s of ``estimate_fisher(method="empirical")`` / samples/s of a plain training step on
  the same batches (target >= 0.5), and its speedup over the brute-force batch-of-one loop it equals;
* memory: extra bytes per trainable parameter held by EWC (Fisher + anchors), fp32 / bf16 Fisher / L2-SP;
* retention: a two-task toy (task A, then fine-tune on task B): forgetting of A and loss on B, plain vs EWC.

Baseline and treatment are interleaved round by round and the ratio is taken per round, then the median, so load
from other processes affects both sides alike.

    python benchmarks/ewc.py            # full (~50M model; a few minutes on 2 cores)
    python benchmarks/ewc.py --quick    # seconds; smoke run used by the tests (ratios not meaningful)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import torch

from hf_retain import EWCPenalty, FisherState, build_tiny_model, estimate_fisher
from hf_retain.ewc.fisher import trainable_parameters

# ~50M parameters: 7 layers x (4 x 768^2 + 3 x 768 x 2048) + byte vocabulary.
FULL_MODEL = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=7, num_attention_heads=12,
                  num_key_value_heads=12, head_dim=64)
QUICK_MODEL = dict(num_hidden_layers=2)


def _model(overrides: dict[str, Any]):
    return build_tiny_model(seed=0, **overrides)


def _shifted_state(model) -> FisherState:
    gen = torch.Generator().manual_seed(0)
    params = trainable_parameters(model)
    return FisherState({n: torch.rand(p.shape, generator=gen) for n, p in params.items()},
                       {n: p.detach() + 1e-3 * torch.randn(p.shape, generator=gen) for n, p in params.items()},
                       "empirical", 1)


def penalty_overhead(overrides: dict[str, Any], rounds: int, steps: int, batch: int, length: int) -> dict[str, float]:
    model = _model(overrides)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    penalty = EWCPenalty(model, _shifted_state(model), lam=1.0)
    ids = torch.randint(3, 259, (batch, length), generator=torch.Generator().manual_seed(1))

    def run(with_ewc: bool) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            if with_ewc:
                penalty.begin()
            loss = model(input_ids=ids, labels=ids).loss
            if with_ewc:
                loss = loss + penalty.finish()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps

    run(False), run(True)  # warm-up
    ratios, base, ewc = [], [], []
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {flag: run(flag) for flag in order}
        ratios.append(times[True] / times[False])
        base.append(times[False])
        ewc.append(times[True])
    n_params = sum(p.numel() for p in model.parameters())
    return {"params_millions": n_params / 1e6, "step_s_plain": statistics.median(base),
            "step_s_ewc": statistics.median(ewc), "step_time_ratio": statistics.median(ratios)}


def fisher_throughput(
    overrides: dict[str, Any], rounds: int, samples: int, batch: int, length: int
) -> dict[str, float]:
    model = _model(overrides)
    gen = torch.Generator().manual_seed(2)
    rows = [{"input_ids": r, "labels": r} for r in torch.randint(3, 259, (samples, length), generator=gen).tolist()]
    ids = torch.tensor([r["input_ids"] for r in rows])
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train() -> float:
        model.train()
        start = time.perf_counter()
        for s in range(0, samples, batch):
            chunk = ids[s:s + batch]
            model(input_ids=chunk, labels=chunk).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return samples / (time.perf_counter() - start)

    def empirical() -> float:
        start = time.perf_counter()
        estimate_fisher(model, rows, batch_size=batch)
        return samples / (time.perf_counter() - start)

    def brute() -> float:
        model.eval()
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        start = time.perf_counter()
        for s in range(samples):
            row = ids[s:s + 1]
            grads = torch.autograd.grad(model(input_ids=row, labels=row).loss, list(params.values()))
            for (n, _), g in zip(params.items(), grads):
                total[n].addcmul_(g, g)
        return samples / (time.perf_counter() - start)

    train(), empirical()  # warm-up
    vs_train, vs_brute, rates = [], [], {"train": [], "empirical": [], "brute": []}
    for _ in range(rounds):
        t, e, b = train(), empirical(), brute()
        rates["train"].append(t)
        rates["empirical"].append(e)
        rates["brute"].append(b)
        vs_train.append(e / t)
        vs_brute.append(e / b)
    return {"train_samples_per_s": statistics.median(rates["train"]),
            "empirical_samples_per_s": statistics.median(rates["empirical"]),
            "brute_force_samples_per_s": statistics.median(rates["brute"]),
            "empirical_over_train": statistics.median(vs_train),
            "speedup_over_brute_force": statistics.median(vs_brute)}


def memory(overrides: dict[str, Any]) -> dict[str, float]:
    """Bytes EWC holds per trainable parameter on one process (state + penalty layout; shared storage counted
    once)."""
    model = _model(overrides)
    numel = sum(p.numel() for p in trainable_parameters(model).values())
    out = {}
    for label, state in (("fp32_fisher", _shifted_state(model)),
                         ("bf16_fisher", _shifted_state(model).to(dtype=torch.bfloat16)),
                         ("l2sp", FisherState.uniform(model))):
        penalty = EWCPenalty(model, state, lam=1.0)
        tensors = [*state.fisher.values(), *state.anchor.values(), *penalty._replicated[1], *penalty._replicated[2]]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        out[f"bytes_per_param_{label}"] = sum(storages.values()) / numel
    return out


# ---- retention toy -----------------------------------------------------------------------------------------------
def markov_rows(seed: int, low: int, high: int, n: int, length: int) -> list[list[int]]:
    """Sequences of a random sparse Markov chain over tokens [low, high): each token has 3 likely successors."""
    gen = torch.Generator().manual_seed(seed)
    k = high - low
    successors = torch.randint(0, k, (k, 3), generator=gen)
    starts = torch.randint(0, k, (n,), generator=gen)
    picks = torch.randint(0, 3, (n, length - 1), generator=gen)
    rows = []
    for i in range(n):
        token = int(starts[i])
        row = [token + low]
        for j in range(length - 1):
            token = int(successors[token, picks[i, j]])
            row.append(token + low)
        rows.append(row)
    return rows


def two_task_retention(lambdas: list[float], *, pretrain_steps: int = 100, finetune_steps: int = 60,
                       batch: int = 16, length: int = 32, fisher_samples: int = 64, lr: float = 3e-3,
                       seed: int = 0) -> dict[str, Any]:
    """Train the 2-layer tiny model on task A (one Markov chain), then fine-tune on task B (another chain over other
    tokens) with `EWCMixin` at each lambda (0 = plain fine-tuning). Returns A's loss before and, per lambda, the
    forgetting (A loss increase) and the final B loss, all on held-out rows."""
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from hf_retain import EWCMixin, RetentionConfig
    from hf_retain.evaluation.loss import evaluate_loss

    class EWCTrainer(EWCMixin, Trainer):
        pass

    a_rows = markov_rows(seed + 1, 3, 67, 576, length)
    b_rows = markov_rows(seed + 2, 100, 164, 576, length)
    a_train, a_eval, b_train, b_eval = a_rows[:512], a_rows[512:], b_rows[:512], b_rows[512:]
    torch.manual_seed(seed)
    model = build_tiny_model(seed=seed, num_hidden_layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.tensor(a_train)
    model.train()
    for _ in range(pretrain_steps):
        chunk = ids[torch.randint(0, len(ids), (batch,))]
        model(input_ids=chunk, labels=chunk).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    start_weights = {k: v.clone() for k, v in model.state_dict().items()}
    a_before = evaluate_loss(model, _as_dataset(a_eval))
    fisher = estimate_fisher(model, [{"input_ids": r, "labels": r} for r in a_train[:fisher_samples]],
                             batch_size=batch)
    results: dict[str, Any] = {"a_loss_before": a_before, "runs": {}}
    logging.getLogger("transformers").setLevel(logging.ERROR)
    for lam in lambdas:
        tuned = build_tiny_model(seed=seed, num_hidden_layers=2)
        tuned.load_state_dict(start_weights)
        args = TrainingArguments(output_dir="/tmp/hf_retain_ewc_bench", max_steps=finetune_steps,
                                 per_device_train_batch_size=batch, learning_rate=lr, lr_scheduler_type="constant",
                                 report_to=[], save_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True,
                                 logging_steps=max(finetune_steps, 1))
        trainer = EWCTrainer(model=tuned, args=args, train_dataset=Dataset.from_dict({"input_ids": b_train,
                                                                                     "labels": b_train}),
                             retention=RetentionConfig(ewc_lambda=lam))
        trainer.remove_callback(PrinterCallback)
        if lam > 0:
            trainer.set_fisher_state(fisher)
        trainer.train()
        results["runs"][lam] = {"forgetting": evaluate_loss(tuned, _as_dataset(a_eval)) - a_before,
                                "b_loss": evaluate_loss(tuned, _as_dataset(b_eval))}
    return results


def _as_dataset(rows: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes; seconds")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        results = {
            "penalty": penalty_overhead(QUICK_MODEL, rounds=2, steps=2, batch=2, length=32),
            "fisher": fisher_throughput(QUICK_MODEL, rounds=1, samples=8, batch=4, length=32),
            "memory": memory(QUICK_MODEL),
            "retention": two_task_retention([0.0, 1e4], pretrain_steps=5, finetune_steps=3, batch=4),
        }
    else:
        results = {
            "penalty": penalty_overhead(FULL_MODEL, rounds=6, steps=3, batch=4, length=128),
            "fisher": fisher_throughput(FULL_MODEL, rounds=3, samples=16, batch=4, length=128),
            "memory": memory(FULL_MODEL),
            "retention": two_task_retention([0.0, 1e3, 1e4]),
        }
    results["retention"]["runs"] = {str(k): v for k, v in results["retention"]["runs"].items()}
    pen, fis = results["penalty"], results["fisher"]
    print(f"model: {pen['params_millions']:.1f}M parameters")
    print(f"penalty step-time ratio (EWC / plain): {pen['step_time_ratio']:.3f}  "
          f"({pen['step_s_ewc']:.3f}s vs {pen['step_s_plain']:.3f}s)   target <= 1.05")
    print(f"Fisher throughput / training-step throughput: {fis['empirical_over_train']:.2f}   target >= 0.5")
    print(f"Fisher speedup over the batch-of-one loop: {fis['speedup_over_brute_force']:.2f}x")
    print("extra bytes per trainable parameter: " + ", ".join(f"{k[16:]} {v:.1f}"
                                                             for k, v in results["memory"].items()))
    ret = results["retention"]
    for lam, run in ret["runs"].items():
        print(f"retention lambda={lam}: forgetting {run['forgetting']:.3f} nats, task-B loss {run['b_loss']:.3f}")
    print("RESULTS " + json.dumps(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
