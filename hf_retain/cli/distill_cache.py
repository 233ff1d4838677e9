"""`hf-retain distill-cache --model TEACHER --data DATA --out FOLDER`: precompute an offline distillation teacher.

Runs the teacher once over the data and writes its top-k next-token log-probs plus a tail bucket (safetensors shards
and a JSON fingerprint of the dataset and tokenizer). Train with ``distill_teacher='offline'`` and
``distill_teacher_path=FOLDER``; no teacher model is loaded during training.

Rows are found by their exact token ids, so tokenize here as training does: SFTTrainer appends the EOS token to plain
text (``--append-eos``) and truncates at its ``max_length`` (``--max-length``). A dataset saved with
``trainer.train_dataset.save_to_disk(...)`` (an ``input_ids`` column) is used as is.

Example:
    hf-retain distill-cache --model builtin:tiny-llama --data general.jsonl --out cache/ --top-k 32 --append-eos
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill-cache", help="precompute an offline distillation teacher (top-k log-probs) to disk",
        description="Run a teacher once over a dataset and cache its top-k next-token log-probs (plus a tail "
                    "bucket) for RetentionConfig(distill_teacher='offline', distill_teacher_path=OUT).",
    )
    parser.add_argument("--model", required=True, help="teacher: local checkpoint, hub id, or builtin:tiny-llama")
    parser.add_argument("--data", required=True,
                        help="dataset: .txt/.json/.jsonl/.csv/.parquet file, saved dataset folder, or hub id")
    parser.add_argument("--out", required=True, help="folder to write the cache into")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the teacher's)")
    parser.add_argument("--text-column", default="text", help="text column when the data is not tokenized")
    parser.add_argument("--split", default="train", help="dataset split (default: train)")
    parser.add_argument("--max-length", type=int, default=1024, help="truncate rows to this many tokens")
    parser.add_argument("--append-eos", action="store_true",
                        help="append the EOS token to each text, as SFTTrainer does for plain-text datasets")
    parser.add_argument("--top-k", type=int, default=32, help="log-probs kept per position (default: 32)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="softmax temperature; must equal distill_temperature in training (default: 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per teacher forward (default: 8)")
    parser.add_argument("--max-samples", type=int, default=None, help="use only the first N rows")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    from hf_retain.data.loading import load_text_dataset
    from hf_retain.distill.cache import build_distill_cache
    from hf_retain.errors import DistillCacheError
    from hf_retain.models import load_tokenizer, resolve_model

    if args.top_k < 1 or args.max_length < 2 or args.batch_size < 1 or not args.temperature > 0:
        raise DistillCacheError(
            f"--top-k ({args.top_k}) and --batch-size ({args.batch_size}) must be >= 1, --max-length "
            f"({args.max_length}) >= 2 and --temperature ({args.temperature}) > 0."
        )
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    dataset = load_text_dataset(args.data, args.split, max_samples=args.max_samples)
    if "input_ids" in dataset.column_names:
        rows = [list(r)[: args.max_length] for r in dataset["input_ids"]]
    elif args.text_column in dataset.column_names:
        texts = list(dataset[args.text_column])
        if args.append_eos:
            eos = tokenizer.eos_token or ""
            texts = [t if t.endswith(eos) else t + eos for t in texts]
        rows = [ids[: args.max_length] for ids in tokenizer(texts)["input_ids"]]
    else:
        raise DistillCacheError(
            f"{args.data} has columns {dataset.column_names}: neither 'input_ids' nor the text column "
            f"{args.text_column!r}; pass --text-column NAME."
        )
    teacher = AutoModelForCausalLM.from_pretrained(resolve_model(args.model))
    folder = build_distill_cache(
        teacher, rows, args.out, tokenizer=tokenizer, top_k=args.top_k, temperature=args.temperature,
        batch_size=args.batch_size,
    )
    print(f"wrote the offline teacher cache for {len(rows)} rows (top-{args.top_k}) to {folder}")
    return 0
