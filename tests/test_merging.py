"""Model merging: PEFT's numbers, SLERP's geometry, streamed checkpoints, bad input, the sweep and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import weakref
from pathlib import Path

import pytest
import torch
from peft.utils import merge_utils
from safetensors.torch import load_file, save_file

from hf_retain.merging import MergeError, load_merge_config, merge_models, merge_task_vectors, slerp
from hf_retain.merging import checkpoint as checkpoint_module

PEFT_METHODS = {
    "task_arithmetic": (merge_utils.task_arithmetic, {}),
    "magnitude_prune": (merge_utils.magnitude_prune, {"density": 0.4}),
    "ties": (merge_utils.ties, {"density": 0.4}),
    "dare_linear": (merge_utils.dare_linear, {"density": 0.6}),
    "dare_ties": (merge_utils.dare_ties, {"density": 0.6}),
}


# ---- one tensor --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(PEFT_METHODS))
def test_equals_peft_on_task_vectors(method):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(16, 12, generator=gen)
    finetuned = [base + torch.randn(16, 12, generator=gen) * 0.1 for _ in range(3)]
    weights = [0.5, 0.3, 0.8]
    fn, kwargs = PEFT_METHODS[method]
    sign = {"majority_sign_method": "frequency"} if method in ("ties", "dare_ties") else {}
    torch.manual_seed(123)  # DARE draws from the global RNG; ours draws from the same seed
    expected = base + fn([f - base for f in finetuned], torch.tensor(weights), **kwargs, **sign)
    got = merge_task_vectors(base, finetuned, method, weights=weights, seed=123, **kwargs, **sign)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_dare_seed_is_reproducible_and_leaves_global_rng_alone():
    base, finetuned = torch.zeros(1000), [torch.ones(1000), -torch.ones(1000) * 0.5]
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = merge_task_vectors(base, finetuned, "dare_linear", density=0.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, merge_task_vectors(base, finetuned, "dare_linear", density=0.5, seed=3))
    assert not torch.equal(first, merge_task_vectors(base, finetuned, "dare_linear", density=0.5, seed=4))


def test_bf16_inputs_keep_base_dtype():
    base = torch.randn(8, dtype=torch.bfloat16)
    out = merge_task_vectors(base, [base + 1, base - 1], "task_arithmetic", weights=[0.5, 0.5])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, base)


def test_slerp_endpoints_norm_and_symmetry():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(64, generator=gen)
    a, b = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    b = b / b.norm() * a.norm()  # equal-norm task vectors
    first, second = base + a, base + b
    torch.testing.assert_close(merge_task_vectors(base, [first, second], "slerp", t=0.0), first)
    torch.testing.assert_close(merge_task_vectors(base, [first, second], "slerp", t=1.0), second)
    for t in (0.25, 0.5, 0.8):
        mid = merge_task_vectors(base, [first, second], "slerp", t=t) - base
        assert mid.norm().item() == pytest.approx(a.norm().item(), rel=1e-4)  # lerp would shrink it
    torch.testing.assert_close(merge_task_vectors(base, [first, second], "slerp", t=0.5),
                               merge_task_vectors(base, [second, first], "slerp", t=0.5))


def test_slerp_falls_back_to_lerp_for_parallel_and_zero_vectors():
    v = torch.arange(1.0, 9.0)
    torch.testing.assert_close(slerp(0.3, v, 2 * v), torch.lerp(v, 2 * v, 0.3))
    torch.testing.assert_close(slerp(0.3, torch.zeros(8), v), 0.3 * v)
    assert torch.isfinite(slerp(0.5, v, v * (1 + 1e-7))).all()


@pytest.mark.parametrize("method, kwargs, n, match", [
    ("ties", {"density": 0.0}, 2, "outside \\(0, 1\\]"),
    ("dare_ties", {"density": 1.5}, 2, "outside \\(0, 1\\]"),
    ("ties", {}, 2, "needs density"),
    ("slerp", {"t": -0.1}, 2, "outside \\[0, 1\\]"),
    ("slerp", {"t": 1.1}, 2, "outside \\[0, 1\\]"),
    ("slerp", {"t": 0.5}, 3, "exactly two"),
    ("task_arithmetic", {"weights": [1.0]}, 2, "1 weights for 2 models"),
    ("task_arithmetic", {"density": 0.5}, 2, "does not use it"),
    ("ties", {"density": 0.5, "majority_sign_method": "vote"}, 2, "majority_sign_method"),
    ("average", {}, 2, "Unknown merge method"),
])
def test_bad_parameters(method, kwargs, n, match):
    base = torch.zeros(3)
    with pytest.raises(MergeError, match=match):
        merge_task_vectors(base, [torch.ones(3)] * n, method, **kwargs)


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _save(model, folder: Path, tokenizer=None) -> Path:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    """A base and three fine-tunes of it (the base plus seeded noise), saved as tiny 1-layer checkpoints."""
    from hf_retain import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    base = build_tiny_model(seed=0, num_hidden_layers=1)
    paths = {"base": _save(base, root / "base", tiny_tokenizer)}
    for i in range(3):
        model = build_tiny_model(seed=0, num_hidden_layers=1)
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
        paths[f"ft{i}"] = _save(model, root / f"ft{i}")
    return paths


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_merge_loads_and_card_records_the_merge(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_retain.lineage import read_pretraining_optimizer, write_lineage

    for name in ("ft0", "ft1"):
        write_lineage(models[name] / "README.md", {"optimizer": {"name": "adamw", "lr": 1e-3}})
    out = tmp_path / "merged"
    result = merge_models(models["base"], [models["ft0"], models["ft1"]], "task_arithmetic", output_dir=out,
                          weights=[0.5, 0.5])
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert (out / "tokenizer.json").is_file()
    a, b = load_file(models["ft0"] / "model.safetensors"), load_file(models["ft1"] / "model.safetensors")
    state = merged.state_dict()
    for name in a:
        torch.testing.assert_close(state[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-6)
    card = (out / "README.md").read_text()
    from hf_retain.lineage.card import split_front_matter

    meta, _ = split_front_matter(card)
    record = meta["hf_retain_merge"]
    assert record["method"] == "task_arithmetic"
    assert [m["model"] for m in record["models"]] == [str(models["ft0"]), str(models["ft1"])]
    assert [m["weight"] for m in record["models"]] == [0.5, 0.5]
    assert [m["pretraining_optimizer"] for m in record["models"]] == ["adamw", "adamw"]
    assert read_pretraining_optimizer(out).name == "adamw"  # both inputs agree: the merge inherits it
    assert result.lineage == {str(models["ft0"]): "adamw", str(models["ft1"]): "adamw"}
    _no_leftovers(tmp_path)


def test_ties_card_records_density_and_sharded_inputs_merge(models, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(models["ft2"]).save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    out = tmp_path / "ties"
    merge_models(models["base"], [models["ft0"], sharded], "ties", output_dir=out, density=0.3,
                 max_shard_size=300_000)
    assert (out / "model.safetensors.index.json").is_file()  # the output is sharded too
    AutoModelForCausalLM.from_pretrained(out)
    from hf_retain.lineage.card import split_front_matter

    meta, _ = split_front_matter((out / "README.md").read_text())
    assert meta["hf_retain_merge"]["parameters"] == {"density": 0.3, "majority_sign_method": "total"}


def _sources(models, *names):
    return [models[n] for n in names]


def test_refuses_different_shapes_naming_the_tensor(models, tmp_path):
    from hf_retain import build_tiny_model

    other = _save(build_tiny_model(seed=0, num_hidden_layers=1, intermediate_size=256), tmp_path / "other")
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"model.layers.0.mlp.down_proj.weight.*\[128, 384\].*\[128, 256\]"):
        merge_models(models["base"], [models["ft0"], other], "ties", output_dir=out, density=0.5)
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_refuses_different_architecture_and_missing_tensor(models, tmp_path):
    from hf_retain import build_tiny_model

    deeper = _save(build_tiny_model(seed=0, num_hidden_layers=2), tmp_path / "deeper")
    with pytest.raises(MergeError, match=r"model.layers.1.*lacks"):
        merge_models(models["base"], [deeper], "task_arithmetic", output_dir=tmp_path / "out")
    partial = tmp_path / "partial"
    partial.mkdir()
    tensors = load_file(models["ft0"] / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    (partial / "config.json").write_text((models["ft0"] / "config.json").read_text())
    with pytest.raises(MergeError, match=r"'model.norm.weight'.*missing from"):
        merge_models(models["base"], [models["ft1"], partial], "task_arithmetic", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_bad_parameters_before_writing(models, tmp_path):
    out = tmp_path / "out"
    cases = [("ties", {"density": 1.2}), ("slerp", {"t": 2.0}), ("task_arithmetic", {"weights": [1, 2, 3]})]
    for method, kwargs in cases:
        with pytest.raises(MergeError):
            merge_models(models["base"], _sources(models, "ft0", "ft1"), method, output_dir=out, **kwargs)
    with pytest.raises(MergeError, match=r"exactly two"):
        merge_models(models["base"], _sources(models, "ft0", "ft1", "ft2"), "slerp", output_dir=out, t=0.5)
    assert not out.exists()


def test_refuses_output_holding_a_model_unless_overwrite(models, tmp_path):
    out = tmp_path / "out"
    merge_models(models["base"], _sources(models, "ft0", "ft1"), "slerp", output_dir=out, t=0.5)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(MergeError, match=r"holds a model already.*overwrite"):
        merge_models(models["base"], _sources(models, "ft0", "ft1"), "slerp", output_dir=out, t=0.2)
    assert (out / "model.safetensors").read_bytes() == before
    merge_models(models["base"], _sources(models, "ft0", "ft1"), "slerp", output_dir=out, t=0.2, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != before
    _no_leftovers(tmp_path)


def test_interrupted_merge_leaves_no_loadable_output(models, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    real_save, calls = checkpoint_module.save_file, []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second shard: write half a file, then die
            Path(filename).write_bytes(b"\0" * 100)
            raise KeyboardInterrupt("simulated interruption")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        merge_models(models["base"], _sources(models, "ft0", "ft1"), "task_arithmetic", output_dir=out,
                     max_shard_size=300_000)
    assert len(calls) == 2
    assert not out.exists()
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(out)
    _no_leftovers(tmp_path)


def test_three_input_merge_holds_about_one_model(models, tmp_path, monkeypatch):
    """Measured by tracking every tensor read from disk until it is freed, plus the reported output bytes."""
    live, peak = [0], [0]
    real_read = checkpoint_module._read_tensor

    def tracked_read(file, name):
        tensor = real_read(file, name)
        size = tensor.numel() * tensor.element_size()
        live[0] += size
        peak[0] = max(peak[0], live[0])
        weakref.finalize(tensor, lambda: live.__setitem__(0, live[0] - size))
        return tensor

    monkeypatch.setattr(checkpoint_module, "_read_tensor", tracked_read)
    result = merge_models(models["base"], _sources(models, "ft0", "ft1", "ft2"), "ties", output_dir=tmp_path / "o",
                          density=0.5)
    model_bytes = (models["base"] / "model.safetensors").stat().st_size
    largest = max(t.numel() * t.element_size() for t in load_file(models["base"] / "model.safetensors").values())
    assert peak[0] <= 5 * largest  # base + 3 inputs (+ the previous tensor's base not yet released)
    assert peak[0] < model_bytes
    assert result.peak_held_bytes < 3 * model_bytes  # generous: streaming holds ~one model, loading all holds 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lora_adapters_merge_like_peft(models, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = []
    for i, targets in enumerate((["q_proj", "v_proj"], ["v_proj", "down_proj", "embed_tokens"])):
        model = AutoModelForCausalLM.from_pretrained(models["base"])
        config = LoraConfig(r=4, lora_alpha=8 + 8 * i, target_modules=targets, init_lora_weights=False,
                            use_rslora=bool(i))
        torch.manual_seed(i)
        peft_model = get_peft_model(model, config)
        adapters.append(tmp_path / f"adapter{i}")
        peft_model.save_pretrained(adapters[-1])
    out = tmp_path / "merged"
    merge_models(models["base"], adapters, "task_arithmetic", output_dir=out, weights=[1.0, 1.0])
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    # PEFT's own answer: both adapters applied in full
    expected = AutoModelForCausalLM.from_pretrained(models["base"]).state_dict()
    for adapter in adapters:
        unloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models["base"]),
                                             str(adapter)).merge_and_unload().state_dict()
        base_state = AutoModelForCausalLM.from_pretrained(models["base"]).state_dict()
        for name in expected:
            expected[name] = expected[name] + (unloaded[name] - base_state[name])
    changed = 0
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-5)
        changed += not torch.equal(tensor, load_file(models["base"] / "model.safetensors").get(name, tensor))
    assert changed >= 4


# ---- config, sweep and CLI ---------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_errors_name_the_problem(tmp_path):
    from hf_retain.errors import RecipeError

    good = "base_model: b\nmerge_method: ties\nmodels: [{model: a, weight: 0.5}, {model: c, weight: 0.5}]\n"
    config = load_merge_config(_write(tmp_path / "ok.yaml", good + "parameters: {density: 0.5}\n"))
    assert config.weights == [0.5, 0.5] and config.density == 0.5
    with pytest.raises(RecipeError, match=r"unknown key 'desnity'.*'density'"):
        load_merge_config(_write(tmp_path / "a.yaml", good + "parameters: {desnity: 0.5}\n"))
    with pytest.raises(MergeError, match=r"density=1.5 is outside"):
        load_merge_config(_write(tmp_path / "b.yaml", good + "parameters: {density: 1.5}\n"))
    with pytest.raises(MergeError, match=r"sweep combination d0"):  # a bad sweep value is refused before any merge
        load_merge_config(_write(tmp_path / "c.yaml", good + "parameters: {density: 0.5}\nsweep: {density: [0]}\n"))
    with pytest.raises(MergeError, match=r"3 weights for 2 models"):
        load_merge_config(_write(tmp_path / "d.yaml", good + "parameters: {density: 0.5}\n"
                                 "sweep: {weights: [[1, 1, 1]]}\n"))
    with pytest.raises(RecipeError, match=r"does not exist"):
        load_merge_config(tmp_path / "missing.yaml")


def test_config_sweep_candidates(tmp_path):
    config = load_merge_config(_write(tmp_path / "s.yaml", (
        "base: b\nmethod: dare_ties\nmodels: [a, c]\nparameters: {seed: 0}\n"
        "sweep: {weights: [[1, 1], [0.7, 0.3]], density: [0.3, 0.6]}\n")))
    tags = [tag for tag, _ in config.candidates()]
    assert tags == ["w1_1-d0.3", "w1_1-d0.6", "w0.7_0.3-d0.3", "w0.7_0.3-d0.6"]
    assert config.candidates()[2][1].weights == [0.7, 0.3]


def test_pareto_front_and_recommendation():
    from hf_retain.merging import merge_pareto_front

    points = {"a": ([0.5, 0.1], 0.02), "b": ([0.4, 0.1], 0.03), "c": ([0.2, 0.3], 0.00), "d": ([0.2, 0.3], 0.01)}
    assert merge_pareto_front(points) == ["a", "c"]
    assert merge_pareto_front({"x": ([math.nan], 0.0), "y": ([0.1], 0.5)}) == ["y"]


def test_cli_sweep_scores_and_recommends(models, tmp_path):
    from hf_retain.cli import merge as merge_cli

    rows = ["def add(a, b):\n    return a + b\n" * 2, "for i in range(10):\n    print(i)\n"]
    prose = ["Return the sum of two numbers.", "This module implements a queue."]
    suite = _write(tmp_path / "suite.yaml", "benchmarks:\n"
                   f"  general_loss: {{type: loss, data: {json.dumps(prose)}}}\n"
                   f"  code_loss: {{type: loss, data: {json.dumps(rows)}}}\n")
    config = _write(tmp_path / "merge.yaml", (
        f"base_model: {models['base']}\nmerge_method: ties\n"
        f"models: [{{model: {models['ft0']}, weight: 0.5}}, {{model: {models['ft1']}, weight: 0.5}}]\n"
        f"parameters: {{density: 0.5}}\noutput_dir: {tmp_path / 'sweep'}\n"
        "sweep: {density: [0.3, 1.0]}\n"))
    parser = argparse.ArgumentParser()
    merge_cli.register(parser.add_subparsers())
    args = parser.parse_args(["merge", str(config), "--evaluate", str(suite), "--sweep"])
    lines: list[str] = []
    report = merge_cli.run_merge(args.config, evaluate=args.evaluate, sweep=args.sweep, echo=lines.append)
    assert [r.role for r in report.rows] == ["base", "input", "input", "merge", "merge"]
    assert report.general == ["general_loss"] and report.domains == ["code_loss"]
    assert report.front and set(report.front) <= {"d0.3", "d1"}
    assert report.recommended in report.front
    for suffix in ("md", "json", "png"):
        assert (tmp_path / "sweep" / f"merge_report.{suffix}").is_file()
    saved = json.loads((tmp_path / "sweep" / "merge_report.json").read_text())
    assert saved["recommended"] == report.recommended
    assert any(line.startswith("Recommended:") for line in lines)
    base_row = report.row("base")
    assert base_row.general_drift == 0.0 and base_row.domain_gains == {"code_loss": 0.0}


def test_cli_single_merge_and_sweep_without_suite_is_refused(models, tmp_path):
    from hf_retain.cli.merge import run_merge
    from hf_retain.errors import RecipeError

    config = _write(tmp_path / "merge.yaml", (
        f"base_model: {models['base']}\nmerge_method: slerp\nmodels: [{models['ft0']}, {models['ft1']}]\n"
        f"parameters: {{t: 0.5}}\noutput_dir: {tmp_path / 'one'}\nsweep: {{t: [0.25, 0.75]}}\n"))
    result = run_merge(str(config), echo=lambda *_: None)
    assert (result.output_dir / "model.safetensors").is_file()
    with pytest.raises(RecipeError, match=r"--evaluate"):
        run_merge(str(config), sweep=True, output_dir=str(tmp_path / "two"), echo=lambda *_: None)
