"""MuonWithAdamW: torch.optim.Muon's update on hidden matrices, AdamW's elsewhere, and the parameter split."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hf_retain.assets import build_tiny_model
from hf_retain.optim import MuonWithAdamW, create_optimizer, split_params_for_muon

HIDDEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _batch(seed: int = 0, rows: int = 4, length: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 259, (rows, length), generator=gen)


def _loss_backward(model: nn.Module, step: int) -> None:
    ids = _batch(step)
    model(input_ids=ids, labels=ids).loss.backward()


def _reference(model: nn.Module, *, lr: float, weight_decay: float, adamw_eps: float = 1e-8, **muon_kwargs):
    """torch.optim.Muon on the hidden matrices + torch.optim.AdamW (Trainer's no-decay rule) on the rest."""
    split = split_params_for_muon(model)
    muon = torch.optim.Muon([p for _, p in split.muon], lr=lr, weight_decay=weight_decay, **muon_kwargs)
    decay = [p for n, p in split.adamw if n not in split.no_decay]
    no_decay = [p for n, p in split.adamw if n in split.no_decay]
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=adamw_eps)
    return muon, adamw


@pytest.mark.parametrize(
    "settings",
    [
        dict(adjust_lr_fn="original"),
        dict(adjust_lr_fn="match_rms_adamw", momentum=0.9, nesterov=False),
        dict(adjust_lr_fn="original", ns_steps=3, ns_coefficients=(3.0, -4.0, 2.0), eps=1e-6),
    ],
)
def test_update_equals_torch_muon_and_adamw(settings):
    model = build_tiny_model(seed=0, num_hidden_layers=2)
    twin = copy.deepcopy(model)
    lr, wd = 0.02, 0.1
    ours = create_optimizer(model, "muon", lr=lr, weight_decay=wd, **settings)
    adamw_eps = settings.get("eps", 1e-8)  # `eps` is torch's name on both halves
    muon, adamw = _reference(twin, lr=lr, weight_decay=wd, adamw_eps=adamw_eps, **settings)
    for step in range(3):
        for m in (model, twin):
            _loss_backward(m, step)
        ours.step()
        muon.step()
        adamw.step()
        ours.zero_grad()
        muon.zero_grad()
        adamw.zero_grad()
    twin_params = dict(twin.named_parameters())
    start = dict(build_tiny_model(seed=0, num_hidden_layers=2).named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, twin_params[name], atol=1e-5, rtol=0, msg=name)
    moved = max((p - start[n]).abs().max().item() for n, p in model.named_parameters() if "q_proj" in n)
    assert moved > 1e-3  # the optimizers really stepped


def test_split_tied_and_untied_heads():
    tied = build_tiny_model(num_hidden_layers=2)
    split = split_params_for_muon(tied)
    assert len(split.muon) == 2 * len(HIDDEN)
    assert all(any(h in n for h in HIDDEN) for n in split.muon_names)
    assert split.reasons["model.embed_tokens.weight"] == "embedding/output head"
    assert split.reasons["model.norm.weight"].startswith("non-matrix")
    assert "model.layers.0.input_layernorm.weight" in split.no_decay

    untied = build_tiny_model(num_hidden_layers=2, tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    split = split_params_for_muon(untied)
    assert split.reasons["lm_head.weight"] == "embedding/output head"
    assert len(split.muon) == 2 * len(HIDDEN)


def test_head_found_by_identity_not_only_by_name():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(10, 8)
            self.hidden = nn.Linear(8, 8)
            self.out = nn.Linear(8, 10, bias=False)

        def get_output_embeddings(self):
            return self.out

    split = split_params_for_muon(Head())
    assert split.muon_names == ["hidden.weight"]
    assert set(split.adamw_names) == {"tok.weight", "hidden.bias", "out.weight"}


def test_lora_factors_and_3d_weights_go_to_adamw_unless_asked():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_model(num_hidden_layers=2),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    split = split_params_for_muon(model)
    assert not split.muon and all(r == "LoRA factor" for r in split.reasons.values())
    with pytest.raises(ValueError, match="muon_lora=True"):
        create_optimizer(model, "muon", lr=1e-3)
    opt = create_optimizer(model, "muon", lr=1e-3, muon_lora=True)
    muon_group = next(g for g in opt.param_groups if g["use_muon"])
    assert len(muon_group["params"]) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.Parameter(torch.randn(4, 8, 8))
            self.proj = nn.Linear(8, 8)

    split = split_params_for_muon(Experts())
    assert split.muon_names == ["proj.weight"]
    assert split.reasons["experts"].startswith("3-D")


def test_state_dict_roundtrip_continues_identically():
    model = build_tiny_model(num_hidden_layers=2)
    opt = create_optimizer(model, "muon", lr=1e-2, weight_decay=0.01)
    _loss_backward(model, 0)
    opt.step()
    opt.zero_grad()
    state = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    opt_twin = create_optimizer(twin, "muon", lr=1e-2, weight_decay=0.01)
    opt_twin.load_state_dict(state)
    for m, o in ((model, opt), (twin, opt_twin)):
        _loss_backward(m, 1)
        o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name
    keys = {k for s in opt.state.values() for k in s}
    assert keys == {"momentum_buffer", "step", "exp_avg", "exp_avg_sq"}


def test_scheduler_and_clipping_see_all_groups():
    from transformers import get_cosine_schedule_with_warmup

    model = build_tiny_model(num_hidden_layers=2)
    opt = create_optimizer(model, "muon", lr=1e-2, adamw_lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.0]
    _loss_backward(model, 0)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-3, 5e-4, 5e-4])


def test_muon_group_refuses_flat_parameters():
    with pytest.raises(ValueError, match="DeepSpeed"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(16))], "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(4, 4))]}])
    with pytest.raises(ValueError, match="does not use"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(4, 4))], "use_muon": False, "momentum": 0.9}])


def _new_required(grad, ns_coefficients, ns_steps, eps, use_addmm):  # PyTorch main's shape of the change
    raise AssertionError("must not be called")


def _reordered(grad, ns_coefficients, eps, ns_steps):  # positional calls would swap eps and ns_steps silently
    raise AssertionError("must not be called")


def _new_optional(grad, ns_coefficients, ns_steps, eps, use_addmm=True):  # still called correctly
    raise AssertionError("must not be called")


@pytest.mark.parametrize("changed,accepted", [(_new_required, False), (_reordered, False), (_new_optional, True)])
def test_private_torch_muon_signatures_are_checked_and_fail_clearly(monkeypatch, changed, accepted):
    import torch.optim._muon as private

    from hf_retain.optim import muon
    from hf_retain.optim.deepspeed import _torch_scale

    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    assert (2, 9) <= version <= (2, 13), "pyproject allows torch>=2.9,<2.14; the tests must run inside that range"
    assert muon._TORCH_PROBLEM is None  # the installed torch matches what hf_retain calls

    real = private._zeropower_via_newtonschulz
    monkeypatch.setattr(private, "_zeropower_via_newtonschulz", changed)
    functions, problem = muon._check_torch_private()  # what the import-time check finds on such a torch
    monkeypatch.setattr(private, "_zeropower_via_newtonschulz", real)  # torch.optim.Muon itself keeps its own
    assert (problem is None) == accepted
    if accepted:
        return
    monkeypatch.setattr(muon, "_TORCH_FUNCTIONS", functions)
    monkeypatch.setattr(muon, "_TORCH_PROBLEM", problem)
    weight = torch.zeros(4, 4)
    expected = r"torch 2\.9 to 2\.13 \(tested on 2\.13\).*_zeropower_via_newtonschulz\(.*torch>=2\.9,<2\.14"
    with pytest.raises(RuntimeError, match=expected):  # the FSDP2 path, at its first use
        muon._muon_dtensor(weight, weight.clone(), weight.clone(), lr=0.01, weight_decay=0.0, momentum=0.95,
                           nesterov=True, ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                           adjust_lr_fn="original")
    with pytest.raises(RuntimeError, match=r"2\.9 to 2\.13"):  # the DeepSpeed LR rule reads the same functions
        _torch_scale("original", (8, 4))
    # Everything else steps with the public torch.optim.Muon and keeps working.
    model = build_tiny_model(seed=0, num_hidden_layers=1)
    opt = create_optimizer(model, "muon", lr=1e-2)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    _loss_backward(model, 0)
    opt.step()
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
