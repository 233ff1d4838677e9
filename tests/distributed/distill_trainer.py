"""2-process distillation runs; prints one RESULT line per rank and phase for tests/test_distill_distributed.py.

Under a DeepSpeed launch it runs the ZeRO phases; under a plain multi-CPU launch it runs DDP phases, then switches
the same processes to FSDP2 (our CPU shim) and runs the FSDP2 phases, so two launches cover three engines.
Phases: a full fine-tune with the frozen snapshot teacher, distilling replayed rows only (rank 0 marks all its rows
as replayed, rank 1 none: the ranks must not hang), a PEFT model whose teacher is itself with adapters disabled, and
a full fine-tune with an offline teacher (a top-8 cache of the initial model, built by each rank before training).
"""

import json
import os

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import RetentionConfig, build_tiny_model
from hf_retain.distill import DistillationMixin, TeacherError
from hf_retain.distributed import end_distributed
from hf_retain.mixin import REPLAY_MASK_KEY, RetentionMixin

RANK = int(os.environ.get("RANK", 0))
TMP = os.environ["HF_RETAIN_TEST_TMP"]


class DistilTrainer(DistillationMixin, RetentionMixin, Trainer):
    pass


def collate(rows):
    ids = torch.tensor([r["input_ids"] for r in rows])
    # Rank 0 replays every row, rank 1 none: distillation must keep the ranks' collectives in step.
    replay = torch.full((len(rows),), RANK == 0, dtype=torch.bool)
    return {"input_ids": ids, "labels": ids.clone(), REPLAY_MASK_KEY: replay}


IDS = torch.randint(3, 259, (32, 16), generator=torch.Generator().manual_seed(0)).tolist()


def run(phase, backend, model, retention, collator=None):
    torch.manual_seed(0)
    ids = IDS
    args = TrainingArguments(
        output_dir=os.path.join(TMP, f"{backend}-{phase}"), max_steps=3, per_device_train_batch_size=2,
        report_to=[], logging_steps=1, save_strategy="no", seed=0, use_cpu=True, learning_rate=1e-2,
        disable_tqdm=True,
    )
    trainer = DistilTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                            retention=retention, data_collator=collator)
    trainer.train()
    teacher = trainer._distill_teacher
    teacher_param = next(trainer.accelerator.unwrap_model(teacher).parameters()) if teacher is not None else None
    history = trainer.state.log_history
    print("RESULT " + json.dumps({
        "phase": phase,
        "backend": backend,
        "rank": RANK,
        "world": trainer.accelerator.num_processes,
        "deepspeed": trainer.is_deepspeed_enabled,
        "fsdp": trainer.is_fsdp_enabled,
        "student_param": type(next(trainer.model_wrapped.parameters())).__name__,
        "teacher": type(teacher).__name__ if teacher is not None else None,
        "teacher_param": type(teacher_param).__name__ if teacher_param is not None else None,
        "teacher_partitioned": bool(teacher_param is not None and hasattr(teacher_param, "ds_id")),
        "mode": trainer._distill_mode,
        "losses": [r["loss"] for r in history if "loss" in r],
        "distill": [r["distill_loss"] for r in history if "distill_loss" in r],
    }), flush=True)


def peft_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # LoRA A is drawn from the global generator
    return get_peft_model(build_tiny_model(seed=0, num_hidden_layers=2),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


def peft_head_model():
    """LoRA on the attention and on the LM head: the student projects through its adapted head."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(build_tiny_model(seed=0, num_hidden_layers=2, tie_word_embeddings=False),
                          LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0))


def offline_cache(backend):
    """A top-8 cache of the initial model over the training rows, one folder per rank (same content)."""
    from hf_retain import load_tiny_tokenizer
    from hf_retain.distill import build_distill_cache

    folder = os.path.join(TMP, f"cache-{backend}-rank{RANK}")
    return build_distill_cache(build_tiny_model(seed=0, num_hidden_layers=2), IDS, folder,
                               tokenizer=load_tiny_tokenizer(), top_k=8, batch_size=8)


def models(backend):
    # Built before any TrainingArguments exists: under DeepSpeed a later model would be initialised inside
    # zero.Init (other random draws), and the engines' results would no longer be comparable.
    return build_tiny_model(seed=0, num_hidden_layers=2), peft_model(), build_tiny_model(seed=0, num_hidden_layers=2), \
        offline_cache(backend), peft_head_model()


def phases(backend, full, peft, offline, cache, peft_head):
    replay_cfg = RetentionConfig(distill_alpha=1.0, distill_on="replay", replay_ratio=0.5,
                                 replay_dataset="unused.jsonl")
    run("snapshot_replay", backend, full, replay_cfg, collate)
    run("peft_base", backend, peft, RetentionConfig(distill_alpha=1.0, distill_divergence="jsd"))
    run("offline", backend, offline, RetentionConfig(distill_alpha=1.0, distill_teacher="offline",
                                                     distill_teacher_path=cache))
    try:  # an adapted LM head: distilled under DDP, refused (clearly) under FSDP2 and ZeRO-3
        run("peft_head", backend, peft_head, RetentionConfig(distill_alpha=1.0))
    except TeacherError as err:
        print("RESULT " + json.dumps({"phase": "peft_head", "backend": backend, "rank": RANK, "refused": str(err)}),
              flush=True)


if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
    stage = "zero" + os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
    phases(stage, *models(stage))
else:
    first, second = models("ddp"), models("fsdp2")
    phases("ddp", *first)
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["FSDP_VERSION"] = "2"
    phases("fsdp2", *second)

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
