"""2-process run with OptimizerConsistencyCallback + LineageCallback; prints one RESULT line per rank.

Checks that the fine-tune optimizer is read through accelerate/DeepSpeed wrappers, that only rank 0 writes the card,
and that the lineage read back from the output equals what ran.
"""

import json
import os
import warnings

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import LineageCallback, OptimizerConsistencyCallback, build_tiny_model, read_pretraining_optimizer
from hf_retain.distributed import end_distributed

tmp = os.environ["HF_RETAIN_TEST_TMP"]
base = os.path.join(tmp, "base")
os.makedirs(base, exist_ok=True)
with open(os.path.join(base, "README.md"), "w") as handle:
    handle.write("## Pretraining\nWe pretrained this model with the Muon optimizer on 1T tokens.\n")
torch.manual_seed(0)
model = build_tiny_model(seed=0, num_hidden_layers=2)
model.name_or_path = base
ids = torch.randint(3, 259, (16, 16)).tolist()
dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
out = os.path.join(tmp, "out")
args = TrainingArguments(output_dir=out, max_steps=2, per_device_train_batch_size=2, report_to=[], logging_steps=1,
                         save_strategy="steps", save_steps=2, seed=0, use_cpu=True, learning_rate=3e-4,
                         adam_beta2=0.95, weight_decay=0.01)
consistency = OptimizerConsistencyCallback(policy="warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[consistency, LineageCallback()])
    trainer.train()
trainer.accelerator.wait_for_everyone()
info = read_pretraining_optimizer(out)
print("RESULT " + json.dumps({
    "rank": int(os.environ.get("RANK", 0)),
    "deepspeed": trainer.is_deepspeed_enabled,
    "status": consistency.finding["status"],
    "finetune": consistency.finding["finetune_optimizer"],
    "finetune_source": consistency.finding["finetune_source"],
    "warned": any("pretrained with muon" in str(w.message) for w in caught),
    "read_back": info.name if info else None,
    "read_back_lr": info.lr if info else None,
    "read_back_betas": list(info.betas) if info and info.betas else None,
    "log_entry": any(e.get("lineage/status") == "mismatch" for e in trainer.state.log_history),
}))

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
