"""2-process check that hidden matrices really get Muon under DDP, FSDP2 and DeepSpeed ZeRO (not AdamW).

Every training row is the same sequence, so each rank's gradient equals the single-process gradient of the same
model, and one process can compute the reference updates itself:

* ``torch``: hf_retain's MuonWithAdamW (torch.optim.Muon's math) on an unsharded copy;
* ``deepspeed``: DeepSpeed's own `muon_update` on the full gradient, with the LR rule of `deepspeed_param_groups`;
* ``adamw``: what an AdamW fallback would have done (first step: lr * sign-like g/|g|).

Prints one ``RESULT {json}`` line per rank with the relative distance of the real step-1 update to each reference
(per hidden matrix, worst case), and for FSDP2 the distance to a shard-wise orthogonalisation.
"""

import copy
import json
import math
import os
import sys

# DeepSpeed wraps its Muon kernels in torch.compile; on CPU that means minutes of C++ compilation per matrix shape.
# Eager mode runs the same math (and lets the reference below run the very same code path).
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_retain import RetentionConfig, build_tiny_model
from hf_retain.distributed import end_distributed
from hf_retain.optim import MuonWithAdamW, OptimizerMixin, split_params_for_muon

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
LR, WD = 1e-2, 0.1
torch.manual_seed(0)
model = build_tiny_model(seed=0, num_hidden_layers=2)
# 160 tokens: identical rows make every gradient matrix rank <= tokens, and bf16 Newton-Schulz amplifies rounding
# noise in a near-null space, so keep the gradients full rank. No clipping, so gradients are bitwise the reference's.
row = torch.randint(3, 259, (160,), generator=torch.Generator().manual_seed(3)).tolist()
dataset = Dataset.from_dict({"input_ids": [row] * 64, "labels": [row] * 64})
hidden = split_params_for_muon(model).muon_names
start = {n: p.detach().clone() for n, p in model.named_parameters()}

# Single-process references on an unsharded copy: the gradient, Muon via torch's math, and AdamW's first step.
reference = copy.deepcopy(model)
# (MuonWithAdamW directly: create_optimizer refuses the torch path under DeepSpeed, as it should.)
ref_opt = MuonWithAdamW(split_params_for_muon(reference).param_groups(), lr=LR, weight_decay=WD)
batch = torch.tensor([row, row])
reference(input_ids=batch, labels=batch).loss.backward()
grad0 = {n: p.grad.detach().clone() for n, p in reference.named_parameters()}
ref_steps = []
for _ in range(STEPS):
    ref_opt.step()
    ref_opt.zero_grad()
    ref_steps.append({n: p.detach().clone() for n, p in reference.named_parameters()})
    reference(input_ids=batch, labels=batch).loss.backward()


class Snapshot(TrainerCallback):
    """Full (gathered) weights after every optimizer step, on every rank."""

    def __init__(self):
        self.weights = []
        self.begin = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = self.gather(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append(self.gather(model))

    @staticmethod
    def gather(model):
        params = dict(model.named_parameters())
        if any(hasattr(p, "ds_id") for p in params.values()):
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
                full = {n: p.detach().clone() for n, p in params.items()}
        else:
            full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                    for n, p in params.items()}
        return full


class MuonTrainer(OptimizerMixin, Trainer):
    pass


snapshot = Snapshot()
args = TrainingArguments(
    output_dir=os.path.join(os.environ["HF_RETAIN_TEST_TMP"], "out"), max_steps=STEPS, per_device_train_batch_size=2,
    learning_rate=LR, weight_decay=WD, lr_scheduler_type="constant", report_to=[], save_strategy="no", seed=0,
    use_cpu=True, logging_steps=1, disable_tqdm=True, max_grad_norm=0.0,
)
trainer = MuonTrainer(model=model, args=args, train_dataset=dataset, callbacks=[snapshot],
                      retention=RetentionConfig(optimizer="muon"))
trainer.train()


def spread(update: torch.Tensor) -> float:
    """Largest over median singular value: ~1 for an orthogonalised update, large for a raw or Adam step."""
    sv = torch.linalg.svdvals(update.double())
    return (sv.max() / sv.median()).item()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


after = snapshot.weights[0]
result = {
    "rank": int(os.environ.get("RANK", 0)), "world": trainer.accelerator.num_processes,
    "deepspeed": trainer.is_deepspeed_enabled, "fsdp": trainer.is_fsdp_enabled, "steps": trainer.state.global_step,
    "param_type": type(next(trainer.model_wrapped.parameters())).__name__, "hidden": len(hidden),
    "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
}
to_torch, to_adamw, to_ds, to_shard, conditions, exact = [], [], [], [], [], 0
for name in hidden:
    w0, g = start[name], grad0[name]
    delta = after[name] - w0
    to_torch.append(rel(delta, ref_steps[0][name] - w0))
    adamw_delta = -LR * WD * w0 - LR * g / (g.abs() + 1e-8)
    to_adamw.append(rel(delta, adamw_delta))
    if trainer.is_deepspeed_enabled:
        from deepspeed.runtime.zero.muon.original_muon import muon_update
        from torch.optim._muon import _adjust_lr

        rows, cols = w0.shape
        ds_lr = LR * _adjust_lr(1.0, "match_rms_adamw", w0.shape) / (math.sqrt(rows / cols) if rows > cols else 1.0)
        update = muon_update(g.clone(), torch.zeros_like(g), beta=0.95, ns_method="standard").float()
        to_ds.append(rel(delta, -LR * WD * w0 - ds_lr * update))
        exact += int(to_ds[-1] < 1e-6)
        # Muon's signature, whatever the rounding: the step (without decay) is orthogonalised, so the bulk of its
        # singular values sits near the top one; an AdamW or SGD step is dominated by a few directions.
        conditions.append(spread(delta + LR * WD * w0))
    if trainer.is_fsdp_enabled:
        # What orthogonalising only this rank's rows would have given (the silent bug we must not have).
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

        half = math.ceil(w0.shape[0] / 2)
        rows = slice(0, half) if result["rank"] == 0 else slice(half, None)
        nesterov = g[rows].lerp(0.05 * g[rows], 0.95)
        shard_update = _zeropower_via_newtonschulz(nesterov, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
        shard_delta = -LR * WD * w0[rows] - _adjust_lr(LR, "match_rms_adamw", w0.shape) * shard_update
        to_shard.append(rel(delta[rows], shard_delta))
result["start_max_abs_diff"] = max((snapshot.begin[n] - start[n]).abs().max().item() for n in start)
result.update(max_rel_to_torch=max(to_torch), min_rel_to_adamw=min(to_adamw))
if to_ds:
    result.update(max_rel_to_deepspeed=max(to_ds), exact_deepspeed_matches=exact,
                  max_update_spread=max(conditions))
    result["min_adamw_update_spread"] = min(spread(grad0[n] / (grad0[n].abs() + 1e-8)) for n in hidden)
if to_shard:
    result["min_rel_to_shardwise"] = min(to_shard)
final = snapshot.weights[-1]
result["final_max_abs_to_torch"] = max((final[n] - ref_steps[-1][n]).abs().max().item() for n in final)
result["non_hidden_max_rel_to_torch"] = max(
    rel(after[n] - start[n], ref_steps[0][n] - start[n]) for n in after if n not in hidden
)
print("RESULT " + json.dumps(result), flush=True)

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
