"""2-process smoke run of RetentionTrainer; prints one RESULT line per rank for the test to check."""

import json
import os
import sys

import torch
from datasets import Dataset
from transformers import TrainingArguments

from hf_retain import RetentionConfig, RetentionTrainer, build_tiny_model
from hf_retain.distributed import end_distributed

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
torch.manual_seed(0)
model = build_tiny_model(seed=0, num_hidden_layers=2)
ids = torch.randint(3, 259, (32, 32)).tolist()
dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
args = TrainingArguments(
    output_dir=os.path.join(os.environ["HF_RETAIN_TEST_TMP"], "out"), max_steps=steps, per_device_train_batch_size=2,
    report_to=[], logging_steps=1, save_strategy="no", seed=0, use_cpu=True,
)
trainer = RetentionTrainer(model=model, args=args, train_dataset=dataset, retention=RetentionConfig())
trainer.train()
param = next(trainer.model_wrapped.parameters())
losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
print("RESULT " + json.dumps({
    "rank": int(os.environ.get("RANK", 0)),
    "world": trainer.accelerator.num_processes,
    "param_type": type(param).__name__,
    "deepspeed": trainer.is_deepspeed_enabled,
    "fsdp": trainer.is_fsdp_enabled,
    "steps": trainer.state.global_step,
    "losses": losses,
}))

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
