"""`hf-retain inspect MODEL_OR_PATH`: which optimizer trained a model, from where, the evidence and the chain."""

from __future__ import annotations

import argparse
import json

from hf_retain.optim.policy import resolve_auto


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show which optimizer (pre)trained a model and where that was found",
        description="Read the optimizer that trained MODEL (a hub repo id, a local folder or a model card file) from "
                    "its model card, checkpoint JSON/YAML, its base_model chain and hf_retain's registry of known "
                    "families. Uses only the local hub cache when HF_HUB_OFFLINE=1. Exit code 0 when found, 1 "
                    "when not.",
    )
    parser.add_argument("model", metavar="MODEL_OR_PATH", help="hub repo id, local folder, or README.md path")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--max-depth", type=int, default=8, help="base_model hops to follow (default 8)")
    parser.add_argument("--cache-dir", default=None, help="hub cache folder (default: huggingface_hub's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_retain.lineage import lookup_pretraining_optimizer

    if args.max_depth < 0:
        print("error: --max-depth must be >= 0")
        return 2
    try:
        found = lookup_pretraining_optimizer(args.model, max_depth=args.max_depth, cache_dir=args.cache_dir)
    except (TypeError, ValueError) as err:
        print(f"error: {err}")
        return 2
    info = found.info
    # What RetentionConfig(optimizer="auto") would build for this model (the Trainer default: AdamW).
    auto, reason = resolve_auto(info.name if info else None, "adamw", found=info.source if info else "")
    if args.json:
        print(json.dumps({"model": args.model, "optimizer": info.to_dict() if info else None, "chain": found.chain,
                          "notes": found.notes, "auto": {"optimizer": auto, "reason": reason}},
                         indent=2, default=str))
        return 0 if info else 1
    print(f"model:      {args.model}")
    print(f"chain:      {' -> '.join(found.chain) if found.chain else '(none)'}")
    if info is None:
        print("optimizer:  not found")
    else:
        print(f"optimizer:  {info.name}" + (f"  (written as {info.variant})" if info.variant else ""))
        for key in ("betas", "eps", "weight_decay", "lr", "schedule", "stage"):
            value = getattr(info, key)
            if value is not None:
                print(f"  {key + ':':<12}{value}")
        print(f"source:     {info.source}")
        print(f"evidence:   {info.evidence}")
        print(f"confidence: {info.confidence:.2f}")
    print(f"auto:       {reason}")
    for note in found.notes:
        print(f"note:       {note}")
    return 0 if info else 1
