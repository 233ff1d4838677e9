"""2-process EWC checks (run under FSDP2 and ZeRO-3); prints one RESULT line per rank.

1. estimate_fisher splits the rows over ranks and all-reduces: equals a local batch-of-one loop on all rows.
2. One optimizer step (SGD, lr 1, 2 accumulation steps, 2 ranks x 2 rows) of an EWC Trainer: the new weights equal
   theta - (task gradient of all 8 rows + lambda F (theta - theta*)) computed in one process, and the logged
   ewc_penalty equals the single-process penalty.
3. (FSDP2 launch) plain torch DDP with EWCPenalty: gradients equal the single-process ones.
"""

import json
import os

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import EWCMixin, EWCPenalty, FisherState, RetentionConfig, build_tiny_model, estimate_fisher
from hf_retain.distributed import end_distributed
from hf_retain.ewc.fisher import trainable_parameters

LAMBDA = 50.0
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
ids = torch.randint(3, 259, (8, 16), generator=gen)
rows = [{"input_ids": r, "labels": r} for r in ids.tolist()]
result: dict = {"rank": int(os.environ.get("RANK", 0))}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def local_fisher(model) -> dict[str, torch.Tensor]:
    params = trainable_parameters(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for row in rows:
        batch = torch.tensor([row["input_ids"]])
        grads = torch.autograd.grad(model(input_ids=batch, labels=batch).loss, list(params.values()))
        for (n, _), g in zip(params.items(), grads):
            total[n] += g**2
    return {n: t / len(rows) for n, t in total.items()}


class EWCTrainer(EWCMixin, Trainer):
    pass


# ---- 1. distributed Fisher estimation ------------------------------------------------------------------------------
reference_model = build_tiny_model(seed=0, num_hidden_layers=2)
if not dist.is_initialized():  # accelerate initialises the group inside the Trainer; estimation needs it before
    from accelerate import PartialState

    PartialState()
state = estimate_fisher(build_tiny_model(seed=0, num_hidden_layers=2), rows, batch_size=2)
expected = local_fisher(reference_model)
result["fisher_samples"] = state.num_samples
result["fisher_rel_err"] = max(rel_err(state.fisher[n], expected[n]) for n in expected)

# ---- 2. Trainer step vs single process -----------------------------------------------------------------------------
# TrainingArguments first, then the model: under ZeRO-3 the model is then created partitioned (deepspeed.zero.Init),
# as in a user's script, so estimation and the penalty see real placeholders.
tmp = os.environ["HF_RETAIN_TEST_TMP"]
args = TrainingArguments(output_dir=os.path.join(tmp, "out"), max_steps=1, per_device_train_batch_size=2,
                         gradient_accumulation_steps=2, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                         max_grad_norm=0.0, report_to=[], logging_steps=1, save_strategy="no", seed=0, use_cpu=True,
                         dataloader_drop_last=True)
model = build_tiny_model(seed=0, num_hidden_layers=2)
result["created_partitioned"] = hasattr(next(model.parameters()), "ds_id")
if result["created_partitioned"]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        start = {n: p.detach().clone() for n, p in model.state_dict().items()}
else:
    start = {n: p.detach().clone() for n, p in model.state_dict().items()}
before = reference_model  # built before TrainingArguments: never partitioned
before.load_state_dict(start)
partitioned_state = estimate_fisher(model, rows, batch_size=2)  # gathers a zero.Init model for the estimate
expected = local_fisher(before)
result["partitioned_fisher_rel_err"] = max(rel_err(partitioned_state.fisher[n], expected[n]) for n in expected)
params0 = trainable_parameters(before)
g = torch.Generator().manual_seed(1)
fisher = {n: torch.rand(p.shape, generator=g) for n, p in params0.items()}
anchor = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for n, p in params0.items()}
shifted = FisherState(fisher, anchor, "empirical", 1)
before.train()
task_grads = torch.autograd.grad(before(input_ids=ids, labels=ids).loss, list(params0.values()))
expected_after = {}
for (n, p), tg in zip(params0.items(), task_grads):
    diff = p.detach() - anchor[n]
    expected_after[n] = p.detach() - (tg + LAMBDA * fisher[n] * diff)

trainer = EWCTrainer(model=model, args=args,
                     train_dataset=Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}),
                     retention=RetentionConfig(ewc_lambda=LAMBDA))
trainer.set_fisher_state(shifted)
trainer.train()
model = trainer.model
result["param_type"] = type(next(model.parameters())).__name__
result["deepspeed"], result["fsdp"] = trainer.is_deepspeed_enabled, trainer.is_fsdp_enabled
if trainer.is_deepspeed_enabled:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        after = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    result["ds_partitioned"] = hasattr(next(model.parameters()), "ds_id")
else:
    after = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
             for n, p in trainable_parameters(model).items()}
result["step_rel_err"] = max(rel_err(after[n] - params0[n].detach(), expected_after[n] - params0[n].detach())
                             for n in expected_after)
log = next(row for row in trainer.state.log_history if "ewc_penalty" in row)
# ewc_penalty is logged at the weights after the step
after_value = sum(float((fisher[n] * (after[n] - anchor[n]) ** 2).sum()) for n in after) * LAMBDA / 2
result["penalty"], result["penalty_expected"] = log["ewc_penalty"], after_value

# ---- 3. plain DDP -------------------------------------------------------------------------------------------------
if trainer.is_fsdp_enabled:
    rank, world = dist.get_rank(), dist.get_world_size()
    plain = build_tiny_model(seed=0, num_hidden_layers=2)
    ddp = torch.nn.parallel.DistributedDataParallel(plain)
    penalty = EWCPenalty(ddp, shifted, LAMBDA)
    mine = ids[rank * 4:(rank + 1) * 4]
    penalty.begin()
    loss = ddp(input_ids=mine, labels=mine).loss
    (loss + penalty.finish()).backward()
    result["ddp_penalty_value"] = penalty.value()
    result["ddp_penalty_expected"] = sum(float((fisher[n] * (p.detach() - anchor[n]) ** 2).sum())
                                         for n, p in trainable_parameters(plain).items()) * LAMBDA / 2
    ref_model = build_tiny_model(seed=0, num_hidden_layers=2)
    ref_params = trainable_parameters(ref_model)
    halves = [ref_model(input_ids=ids[r * 4:(r + 1) * 4], labels=ids[r * 4:(r + 1) * 4]).loss for r in range(world)]
    ref_grads = torch.autograd.grad(torch.stack(halves).mean(), list(ref_params.values()))
    errs = []
    for (n, p), tg in zip(trainable_parameters(plain).items(), ref_grads):
        errs.append(rel_err(p.grad, tg + LAMBDA * fisher[n] * (p.detach() - anchor[n])))
    result["ddp_grad_rel_err"] = max(errs)

print("RESULT " + json.dumps(result), flush=True)

end_distributed()  # join the process group's threads before exit (an exit-time SIGABRT otherwise)
