"""2-process replay run: each rank draws different replay rows, every batch has the exact replay count, and a
resumed run (from a mid-epoch checkpoint) reproduces the uninterrupted run's batches on every rank."""

import json
import os

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hf_retain import RetentionConfig, build_tiny_model, load_tiny_tokenizer
from hf_retain.distributed import end_distributed
from hf_retain.mixin import REPLAY_MASK_KEY, RetentionMixin
from hf_retain.replay import ReplayMixin

TMP = os.environ["HF_RETAIN_TEST_TMP"]
GENERAL = [f"General text {i} on hills." for i in range(64)]
DOMAIN = [f"def f{i}(x):\n    return x * {i}" for i in range(32)]


class Recording(ReplayMixin, RetentionMixin, SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.batches.append({k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


general = os.path.join(TMP, "general.jsonl")
if int(os.environ.get("RANK", 0)) == 0:
    with open(general + ".tmp", "w") as handle:
        handle.write("".join(json.dumps({"text": t}) + "\n" for t in GENERAL))
    os.replace(general + ".tmp", general)
while not os.path.exists(general):
    pass
retention = RetentionConfig(replay_ratio=0.5, replay_dataset=general, distill_alpha=1.0, distill_on="replay")


def run(out, resume=None):
    args = SFTConfig(output_dir=os.path.join(TMP, out), max_steps=6, per_device_train_batch_size=4, max_length=48,
                     use_cpu=True, report_to=[], save_strategy="steps", save_steps=3, seed=0, learning_rate=1e-3,
                     gradient_checkpointing=False, logging_steps=1)
    trainer = Recording(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args, retention=retention,
                        train_dataset=Dataset.from_dict({"text": DOMAIN}), processing_class=load_tiny_tokenizer())
    trainer.batches = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer


full = run("full")
resumed = run("resumed", resume=os.path.join(TMP, "full", "checkpoint-3"))
tok = load_tiny_tokenizer()
replayed = [tok.batch_decode(b["input_ids"][b[REPLAY_MASK_KEY]], skip_special_tokens=True) for b in full.batches]
print("RESULT " + json.dumps({
    "rank": full.args.process_index,
    "world": full.accelerator.num_processes,
    "replay_counts": [int(b[REPLAY_MASK_KEY].sum()) for b in full.batches],
    "base_counts": [int((~b[REPLAY_MASK_KEY]).sum()) for b in full.batches],
    "replayed": replayed,
    "replay_rows_are_general": all(t in GENERAL for texts in replayed for t in texts),
    "resume_equal": len(resumed.batches) == 3 and all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(full.batches[3:], resumed.batches)),
    "collator_rank": full.replay_collator.rank,
}))

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
