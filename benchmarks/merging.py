"""Merging specialists vs sequential fine-tuning, on the same data: what each learned and what each forgot.

From the tiny model pretrained on the built-in general corpus (standard-library prose), with identical steps,
learning rate, batch size and seed everywhere:

* specialist A: fine-tuned on domain A; specialist B: fine-tuned on domain B (each from the base);
* merges of the two specialists (task arithmetic, TIES, DARE-TIES, SLERP), by `hf_retain.merging.merge_models`;
* sequential: A then B (two rounds, each the specialists' length), plain and with the recommended replay mix
  (``adamw+replay+distill``: 30% of every batch is general prose, distilled from the model before the round).

Domains, both offline: A is Python (the built-in ``domain`` corpus: standard-library code without docstrings or
comments); B is C (CPython's own headers, ``sysconfig``'s include folder, falling back to /usr/include), cut into
128-character pieces and split train/held-out by file. Learning on a domain is the fall of its held-out loss from
the base's; forgetting is the rise of held-out general loss (nats per token). The numbers are reported whichever way
they go.

A second part measures memory: a 3-input TIES merge of a ~170 MB model (42M parameters, fp32) in a fresh process,
peak resident memory (``ru_maxrss``) over what the process held before the merge, against one model's size, and the
same for loading the four state dicts whole.

    python benchmarks/merging.py [--json out.json]   # ~5 min on 2 idle CPU cores; prints the table
    python benchmarks/merging.py --quick             # a smoke run (numbers not meaningful)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _chunks(text: str, size: int) -> list[str]:
    pieces, current, length = [], [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        current.append(line)
        length += len(line) + 1
        if length >= size:
            pieces.append("\n".join(current))
            current, length = [], 0
    return pieces


def write_c_corpus(out: Path, max_chars: int = 1_200_000, chunk_chars: int = 128) -> tuple[Path, Path]:
    """Domain B: C headers cut into pieces, files hashed into train (90%) and held-out (10%)."""
    roots = [Path(sysconfig.get_paths()["include"]), Path("/usr/include")]
    files = [f for root in roots if root.is_dir() for f in sorted(root.rglob("*.h"))]
    if not files:
        raise SystemExit("no C headers found (sysconfig include folder or /usr/include); domain B needs them")
    splits: dict[str, list[str]] = {"train": [], "eval": []}
    size = 0
    for file in files:
        if size >= max_chars:
            break
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        split = "eval" if int(hashlib.sha1(file.name.encode()).hexdigest(), 16) % 10 == 0 else "train"
        pieces = _chunks(text, chunk_chars)
        splits[split].extend(pieces)
        size += sum(len(p) for p in pieces)
    splits["train"] = list(dict.fromkeys(splits["train"]))
    seen = set(splits["train"])
    splits["eval"] = [t for t in dict.fromkeys(splits["eval"]) if t not in seen]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("train", "eval"):
        path = out / f"c_{split}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in splits[split]), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


# ---- part 1: learning and forgetting -----------------------------------------------------------------------------
def learning_and_forgetting(out: Path, quick: bool, steps: int | None = None) -> dict:
    from hf_retain.bench import _quiet_libraries
    from hf_retain.compare import Task, parse_arm, run_arm
    from hf_retain.config import RetentionConfig
    from hf_retain.data.corpora import write_builtin_corpora
    from hf_retain.data.loading import load_text_dataset
    from hf_retain.evaluation.loss import evaluate_loss
    from hf_retain.merging import merge_models
    from hf_retain.models import load_tokenizer
    from hf_retain.pretrain import pretrained_tiny_model, training_recipe

    _quiet_libraries()
    s = dict(pretrain_steps=8, steps=4, batch=4, max_length=64, eval_rows=16) if quick else \
        dict(pretrain_steps=300, steps=150, batch=16, max_length=128, eval_rows=256)
    if steps is not None:
        s["steps"] = steps
    lr, seed = 1e-3, 0
    base = pretrained_tiny_model("adamw", steps=s["pretrain_steps"], batch_size=s["batch"] if quick else 16,
                                 max_length=s["max_length"] if quick else 128)
    corpora = write_builtin_corpora(out / "data")
    c_train, c_eval = write_c_corpus(out / "data")
    task_a = Task("python", str(corpora["domain_train"]), str(corpora["domain_eval"]), "train", "train")
    task_b = Task("c", str(c_train), str(c_eval), "train", "train")
    general_rows = load_text_dataset(str(corpora["general_eval"]), "train", max_samples=s["eval_rows"])
    tasks = [task_a, task_b]
    capacity = max(256, 2 * s["steps"] * s["batch"])
    retention = RetentionConfig(replay_dataset=str(corpora["general_train"]), replay_capacity=capacity,
                                consistency_policy="off", record_lineage=True)

    def recipe(run_dir: Path, dataset: str):
        return training_recipe(str(base), dataset, run_dir, steps=s["steps"], lr=lr, batch_size=s["batch"],
                               max_length=s["max_length"], seed=seed, retention=retention)

    arms: dict[str, dict] = {}
    started = time.perf_counter()
    specialists = {}
    for name, order in (("specialist python", [task_a, task_b]), ("specialist c", [task_b, task_a])):
        run_dir = out / "runs" / name.replace(" ", "_")
        record = run_arm(recipe(run_dir, order[0].dataset_name), parse_arm("adamw"), order, general_rows,
                         rounds=1, output_dir=run_dir, eval_rows=s["eval_rows"])
        by_task = dict(zip(record.tasks, record.task_losses[-1]))
        before = dict(zip(record.tasks, record.task_losses[0]))
        arms[name] = {"losses": {**by_task, "general": record.general_losses[-1]}, "steps": s["steps"],
                      "seconds": sum(record.seconds)}
        arms.setdefault("base", {"losses": {**before, "general": record.general_losses[0]}, "steps": 0,
                                 "seconds": 0.0})
        specialists[name] = run_dir / "round1"
    for spec, name in (("adamw", "sequential python->c"), ("adamw+replay+distill", "sequential +replay+distill")):
        run_dir = out / "runs" / spec.replace("+", "_")
        record = run_arm(recipe(run_dir, task_a.dataset_name), parse_arm(spec), tasks, general_rows,
                         output_dir=run_dir, eval_rows=s["eval_rows"])
        arms[name] = {"losses": {**dict(zip(record.tasks, record.task_losses[-1])),
                                 "general": record.general_losses[-1]},
                      "after round 1": {**dict(zip(record.tasks, record.task_losses[1])),
                                        "general": record.general_losses[1]},
                      "steps": 2 * s["steps"], "seconds": sum(record.seconds)}
    tokenizer = load_tokenizer(str(base))
    evals = {t.name: load_text_dataset(t.eval_dataset_name, "train", max_samples=s["eval_rows"]) for t in tasks}
    merges = {
        "task_arithmetic w=1,1": ("task_arithmetic", {"weights": [1.0, 1.0]}),
        "task_arithmetic w=.5,.5": ("task_arithmetic", {"weights": [0.5, 0.5]}),
        "ties d=.5 w=1,1": ("ties", {"weights": [1.0, 1.0], "density": 0.5}),
        "dare_ties d=.5 w=1,1": ("dare_ties", {"weights": [1.0, 1.0], "density": 0.5, "seed": 0}),
        "slerp t=.5": ("slerp", {"t": 0.5}),
    }
    from transformers import AutoModelForCausalLM

    for name, (method, kwargs) in merges.items():
        target = out / "merges" / name.replace(" ", "_").replace("=", "").replace(",", "_")
        result = merge_models(base, list(specialists.values()), method, output_dir=target, overwrite=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(target)
        losses = {t: evaluate_loss(model, e, tokenizer, max_length=s["max_length"]) for t, e in evals.items()}
        losses["general"] = evaluate_loss(model, general_rows, tokenizer, max_length=s["max_length"])
        arms["merge " + name] = {"losses": losses, "steps": 2 * s["steps"], "seconds": result.seconds,
                                 "lineage": result.lineage}
    base_losses = arms["base"]["losses"]
    for arm in arms.values():
        arm["learning"] = {t.name: base_losses[t.name] - arm["losses"][t.name] for t in tasks}
        arm["forgetting"] = arm["losses"]["general"] - base_losses["general"]
    return {"settings": s, "lr": lr, "seed": seed, "base": str(base), "arms": arms,
            "domains": {"python": "built-in domain corpus (stdlib code)",
                        "c": f"C headers ({c_train.stat().st_size // 1000} kB train)"},
            "seconds": round(time.perf_counter() - started, 1)}


# ---- part 2: memory ----------------------------------------------------------------------------------------------
_MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from safetensors.torch import load_file
    import hf_retain.merging.checkpoint, hf_retain.merging.tensors  # imported before the baseline is read
    kind, base, out, *inputs = sys.argv[1:]
    kb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = kb()
    if kind == "stream":
        from hf_retain.merging import merge_models
        result = merge_models(base, inputs, "ties", output_dir=out, density=0.5)
        extra = {"peak_held_bytes": result.peak_held_bytes, "output_bytes": result.output_bytes}
    else:  # what holding every model whole costs (cloned: load_file may map the file without reading it)
        states = [{k: v.clone() for k, v in load_file(p + "/model.safetensors").items()} for p in [base, *inputs]]
        extra = {}
    print(json.dumps({"rss_before_kb": before, "rss_peak_kb": kb(), **extra}))
""")


def memory(out: Path, quick: bool) -> dict:
    import torch

    from hf_retain import build_tiny_model

    size = {} if quick else dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6,
                                 num_attention_heads=12, num_key_value_heads=12)
    root = Path(tempfile.mkdtemp(prefix="merge-mem-", dir=out))
    base = build_tiny_model(seed=0, **size)
    params = sum(p.numel() for p in base.parameters())
    base.save_pretrained(root / "base")
    for i in range(3):
        with torch.no_grad():
            for p in base.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        base.save_pretrained(root / f"in{i}")
    del base
    model_bytes = (root / "base" / "model.safetensors").stat().st_size
    rows = {}
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    for kind in ("stream", "load_all"):
        proc = subprocess.run([sys.executable, "-c", _MEASURE, kind, str(root / "base"), str(root / f"out-{kind}"),
                               *(str(root / f"in{i}") for i in range(3))], capture_output=True, text=True,
                              env=env, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["rss_growth_bytes"] = (row["rss_peak_kb"] - row["rss_before_kb"]) * 1024
        row["rss_growth_models"] = row["rss_growth_bytes"] / model_bytes
        rows[kind] = row
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return {"parameters": params, "model_bytes": model_bytes, "inputs": 3, **rows}


# ---- report ------------------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    part = result["learning_and_forgetting"]
    lines = ["| arm | train steps | learning python | learning c | general forgetting |", "|---|---|---|---|---|"]
    for name, arm in part["arms"].items():
        if name == "base":
            continue
        lines.append(f"| {name} | {arm['steps']} | {arm['learning']['python']:+.3f} | {arm['learning']['c']:+.3f} "
                     f"| {arm['forgetting']:+.3f} |")
    b = part["arms"]["base"]["losses"]
    lines += ["", f"Base held-out losses: python {b['python']:.3f}, c {b['c']:.3f}, general {b['general']:.3f} "
                  "(nats/token). Learning = base loss - arm loss on that domain; forgetting = arm general loss - "
                  "base general loss."]
    mem = result.get("memory")
    if mem:
        mb = mem["model_bytes"] / 1e6
        lines += ["", f"Memory, 3-input TIES merge of a {mem['parameters'] / 1e6:.1f}M-parameter model "
                      f"({mb:.0f} MB): peak RSS growth {mem['stream']['rss_growth_bytes'] / 1e6:.0f} MB = "
                      f"{mem['stream']['rss_growth_models']:.2f} models (tensor bytes held at once: "
                      f"{mem['stream']['peak_held_bytes'] / 1e6:.0f} MB); loading the 4 state dicts whole: "
                      f"{mem['load_all']['rss_growth_bytes'] / 1e6:.0f} MB = {mem['load_all']['rss_growth_models']:.2f}"
                      " models."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds; numbers not meaningful")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here (and the table beside it, .md)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps per domain (default 150; --quick 4)")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out or tempfile.mkdtemp(prefix="hf-retain-merging-"))
    out.mkdir(parents=True, exist_ok=True)
    result = {"learning_and_forgetting": learning_and_forgetting(out, args.quick, args.steps)}
    if not args.skip_memory:
        result["memory"] = memory(out, args.quick)
    text = markdown(result)
    print(text)
    if args.json:
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2), encoding="utf-8")
        target.with_suffix(".md").write_text(text, encoding="utf-8")
        print(f"wrote {target} and {target.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
