"""2-process runs of RegressionEarlyStoppingCallback; prints one RESULT line per rank for the test to check.

Scenarios (argv[1]):
* ``decide``: ranks are configured to decide differently (rank 0 patience 3, rank 1 patience 1) and their
  benchmark returns rank-dependent scores. Without broadcasting rank 0's scores and decision, rank 1 would stop at
  step 2 while rank 0 trains on and waits forever in the next gradient all-reduce. Every evaluation regresses, so
  the rollback restores the weights from before step 1 (kept on rank 0, broadcast to rank 1).
* ``rollback``: a destructive fine-tune under the launched back-end (FSDP2 / ZeRO-3) is stopped and the last in-bounds
  weights, gathered from the shards, are restored on every rank. ``rollback-disk``: the same with
  ``rollback_store='disk'`` (rank 0 writes the gathered target to output_dir and reads it back to restore).
"""

import json
import os
import sys

import torch
from datasets import Dataset
from transformers import TrainingArguments

from hf_retain import RetentionTrainer, build_tiny_model, load_tiny_tokenizer
from hf_retain.callbacks.regression import RegressionEarlyStoppingCallback
from hf_retain.distributed import end_distributed, rank
from hf_retain.evaluation.evaluators import FunctionEvaluator, LossEvaluator
from hf_retain.evaluation.loss import evaluate_loss
from hf_retain.evaluation.suite import RetentionSuite

scenario = sys.argv[1]
torch.manual_seed(0)
tok = load_tiny_tokenizer()
GENERAL = ["The quick brown fox jumps over the lazy dog. " * 2 + str(i) for i in range(8)]
code = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 3 for i in range(32)]
ids = [tok(t, add_special_tokens=False)["input_ids"][:64] for t in code]
dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
model = build_tiny_model(seed=0, num_hidden_layers=2)
my_rank = int(os.environ.get("RANK", 0))

if scenario == "decide":
    calls = []

    def rank_dependent(model, tokenizer):
        calls.append(1)
        if len(calls) == 1:
            return 1.0
        return 0.5 if rank() == 0 else 0.4  # regressed on both ranks, by different amounts

    suite = RetentionSuite([FunctionEvaluator(rank_dependent, name="scripted"), LossEvaluator(GENERAL, name="general")])
    guard = RegressionEarlyStoppingCallback(suite, every_n_steps=2, patience=3 if my_rank == 0 else 1,
                                            action="rollback", per_benchmark_thresholds={"general": 100.0},
                                            check_at_end=False)
    steps, lr = 12, 1e-5
else:
    suite = RetentionSuite([LossEvaluator(GENERAL, name="general")])
    guard = RegressionEarlyStoppingCallback(suite, every_n_steps=2, action="rollback",
                                            rollback_store="disk" if scenario == "rollback-disk" else "memory")
    steps, lr = 24, 1e-2

args = TrainingArguments(
    output_dir=os.path.join(os.environ["HF_RETAIN_TEST_TMP"], "out"), max_steps=steps, per_device_train_batch_size=4,
    learning_rate=lr, lr_scheduler_type="constant", report_to=[], logging_steps=100, save_strategy="no", seed=0,
    use_cpu=True, disable_tqdm=True,
)
trainer = RetentionTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[guard])
trainer.train()
param = next(trainer.model_wrapped.parameters())  # FSDP2: still DTensor shards after the guard's evaluations
final = evaluate_loss(trainer.model, GENERAL, tok)  # every rank joins the (sharded) forward passes
max_diff = None
if scenario == "decide":  # every evaluation regressed: the rollback target is the weights before step 1
    initial = dict(build_tiny_model(seed=0, num_hidden_layers=2).named_parameters())
    max_diff = max((p.detach() - initial[n]).abs().max().item() for n, p in trainer.model.named_parameters())
print("RESULT " + json.dumps({
    "rank": my_rank,
    "param_type": type(param).__name__,
    "deepspeed": trainer.is_deepspeed_enabled,
    "fsdp": trainer.is_fsdp_enabled,
    "steps": trainer.state.global_step,
    "stopped_at": guard.stopped_at,
    "restored_step": guard.restored_step,
    "best_step": guard.best_step,
    "baseline": guard.baseline["results"][0]["score"] if scenario.startswith("rollback") else None,
    "held_in_memory": bool(guard._snapshot),  # non-empty: a gathered copy (the memory store, on rank 0 only)
    "target_on_disk": os.path.isfile(os.path.join(args.output_dir, "retention_rollback", "weights.safetensors")),
    "history": guard.history,
    "final_general": final,
    "max_diff_from_initial": max_diff,
}), flush=True)

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
