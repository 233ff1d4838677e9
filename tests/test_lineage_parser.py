"""`parse_model_card` and name canonicalisation: formats, false-positive traps, hostile input, fuzzing."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_retain import OptimizerInfo, canonical_optimizer_name, parse_model_card
from hf_retain.lineage.card import MAX_CARD_CHARS, safe_yaml_load, split_front_matter
from hf_retain.lineage.info import same_family


@pytest.mark.parametrize(
    ("raw", "family"),
    [
        ("adamw_torch", "adamw"), ("adamw_hf", "adamw"), ("adamw_torch_fused", "adamw"),
        ("OptimizerNames.PAGED_ADAMW_8BIT", "adamw"), ("adamw_bnb_8bit", "adamw"), ("paged_adamw_32bit", "adamw"),
        ("AdamWeightDecay", "adamw"), ("<class 'torch.optim.adamw.AdamW'>", "adamw"), ("Adam", "adam"),
        ("adafactor", "adafactor"), ("MuonClip", "muon"), ("muon", "muon"), ("sgd", "sgd"), ("lion_8bit", "lion"),
        ("paged_lion_32bit", "lion"), ("LAMB", "lamb"), ("SophiaG", "sophia"), ("adagrad", "adagrad"),
        ("rmsprop_bnb", "rmsprop"), ("galore_adamw", "galore"), ("ademamix_8bit", "ademamix"),
        ("schedule_free_adamw", "other:schedule_free_adamw"), ("MyOpt", "other:myopt"),
    ],
)
def test_canonical_names(raw: str, family: str) -> None:
    assert canonical_optimizer_name(raw) == family


def test_canonical_rejects_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        canonical_optimizer_name("  ")


def test_adam_and_adamw_are_compatible_but_muon_is_not() -> None:
    assert same_family("adam", "adamw") and not same_family("muon", "adamw")


def test_trainer_line_hyperparameters() -> None:
    card = ("- learning_rate: 2e-05\n- seed: 42\n- optimizer: Use OptimizerNames.ADAMW_TORCH with betas=(0.9,0.98) "
            "and epsilon=1e-06 and optimizer_args=No additional optimizer arguments\n- lr_scheduler_type: cosine\n")
    info = parse_model_card(card)
    assert isinstance(info, OptimizerInfo)
    assert (info.name, info.betas, info.eps, info.lr, info.schedule) == ("adamw", (0.9, 0.98), 1e-06, 2e-05, "cosine")
    assert "OptimizerNames.ADAMW_TORCH" in info.evidence and info.confidence >= 0.9


def test_old_trainer_adam_is_reported_as_adam() -> None:
    info = parse_model_card("- optimizer: Adam with betas=(0.9,0.999) and epsilon=1e-08\n")
    assert info is not None and info.name == "adam" and info.betas == (0.9, 0.999)


def test_use_x_and_the_args_are() -> None:
    info = parse_model_card("- optimizer: Use sgd and the args are:\nmomentum=0.9\n- lr_scheduler_type: linear\n")
    assert info is not None and info.name == "sgd" and info.variant == "sgd"


def test_keras_dict_hyperparameters() -> None:
    card = ("- optimizer: {'name': 'AdamWeightDecay', 'learning_rate': 2e-05, 'decay': 0.0, 'beta_1': 0.9, "
            "'beta_2': 0.999, 'epsilon': 1e-07, 'amsgrad': False, 'weight_decay_rate': 0.01}\n")
    info = parse_model_card(card)
    assert info is not None
    assert (info.name, info.betas, info.eps, info.weight_decay, info.lr) == ("adamw", (0.9, 0.999), 1e-07, 0.01, 2e-05)


@pytest.mark.parametrize(
    ("card", "family"),
    [
        ("## Training\nWe pretrain with the Muon optimizer on 5.7T tokens.", "muon"),
        ("Based on MuonClip, K2 was pre-trained on 15.5 trillion tokens with zero loss spike.", "muon"),
        ("The model was trained with AdamW (beta1 = 0.9, beta2 = 0.95) and a cosine schedule.", "adamw"),
        ("Optimizer: AdaFactor\n", "adafactor"),
        ("We use the LAMB optimizer with a learning rate of 0.00176.", "lamb"),
        ("Pretraining used AdamW; the reward model was trained with Adam at lr 1e-6.", "adamw"),
        ("We pretrained using Muon, which is 2x more sample efficient than AdamW.", "muon"),
    ],
)
def test_prose_positive(card: str, family: str) -> None:
    info = parse_model_card(card)
    assert info is not None and info.name == family, info


@pytest.mark.parametrize(
    "card",
    [
        "We thank Adam Roberts and Noam Shazeer for feedback.",
        "Unlike Adam, our method needs no second-moment state.",
        "Muon is about 2x more sample efficient than AdamW in our scaling experiments.",
        "## Citation\n```bibtex\n@article{kingma2014adam, title={Adam: A Method for Stochastic Optimization}}\n```",
        "Kingma, D. P., & Ba, J. (2015). Adam: A method for stochastic optimization. ICLR.",
        "The reward model was trained with Adam (lr 1e-5).",
        "We compare AdamW and Lion in an ablation.",
        "You can fine-tune this model with AdamW or Adafactor.",
        "This model was trained without SGD momentum tricks.",
        "The Lion King dataset was used for evaluation.",
        "Detector simulation of muon tracks in the calorimeter.",
        "- optimizer: [More Information Needed]\n- optimizer: None\n",
        "## How to use\n```python\nargs = TrainingArguments(optim='adamw_torch', learning_rate=2e-5)\n```",
        "",
    ],
)
def test_prose_negative(card: str) -> None:
    assert parse_model_card(card) is None


def test_pretraining_sentence_beats_finetuning_sentence() -> None:
    card = ("## Fine-tuning\nThe SFT stage used Adafactor.\n\n## Pretraining\n"
            "The base model was pretrained with AdamW on 2T tokens.\n")
    info = parse_model_card(card)
    assert info is not None and info.name == "adamw" and info.stage == "pretrain"


def test_lineage_block_wins_over_everything() -> None:
    card = ("---\nhf_retain_lineage:\n  optimizer: {name: muon, lr: 0.02}\n  lr_schedule: cosine\n---\n"
            "- optimizer: Use adamw_torch with betas=(0.9,0.999) and epsilon=1e-08\n")
    info = parse_model_card(card)
    assert info is not None and (info.name, info.lr, info.schedule, info.confidence) == ("muon", 0.02, "cosine", 1.0)


def test_type_error_names_the_fix() -> None:
    with pytest.raises(TypeError, match="read_pretraining_optimizer"):
        parse_model_card(b"- optimizer: Adafactor")  # type: ignore[arg-type]


# ---- hostile input ---------------------------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_fast() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    start = time.perf_counter()
    assert safe_yaml_load(bomb) is None
    meta, _ = split_front_matter(f"---\n{bomb}---\n- optimizer: Adafactor\n")
    assert meta == {}
    assert parse_model_card(f"---\n{bomb}---\n- optimizer: Adafactor\n").name == "adafactor"
    assert time.perf_counter() - start < 2


def test_malformed_yaml_and_python_tags() -> None:
    assert safe_yaml_load("a: [unclosed") is None
    assert safe_yaml_load("!!python/object/apply:os.system ['echo hi']") is None
    assert parse_model_card("---\nbase_model: [a\n---\nnothing here\n") is None


def test_huge_card_is_bounded() -> None:
    filler = ("lorem ipsum dolor sit amet " * 40 + "\n") * 2000
    card = filler * 2 + "- optimizer: Adafactor\n"
    start = time.perf_counter()
    assert len(card) > MAX_CARD_CHARS
    assert parse_model_card(card) is None  # the optimizer line is past the bound
    assert time.perf_counter() - start < 15


def test_giant_single_line_and_binary_junk() -> None:
    assert parse_model_card("x" * 300_000) is None
    junk = bytes(range(256)).decode("latin-1") * 200
    assert parse_model_card(junk + "\x00\ufffd") is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_fuzz_never_raises(text: str) -> None:
    info = parse_model_card(text)
    assert info is None or (isinstance(info.name, str) and 0.0 <= info.confidence <= 1.0)


_PIECES = st.sampled_from([
    "- optimizer: ", "Adam", "AdamW", "Muon", " with betas=(0.9,0.999)", "---\n", "## Citation\n", "```\n",
    "unlike ", "trained with ", " optimizer", "\n", "{'name': '", "'}", "| name | ", " |", "β1 = 0.9", ": &a [*a]",
    "base_model: x\n", "Use ", " and the args are:", "We thank ", "than ",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(_PIECES, max_size=25).map("".join))
def test_fuzz_structured_pieces(text: str) -> None:
    info = parse_model_card(text)
    if info is not None:
        assert info.name == canonical_optimizer_name(info.variant or info.name) or info.source.startswith("hf_retain")


def test_training_code_in_card_counts_but_comments_and_usage_do_not() -> None:
    training = ("## Training procedure\n```python\nargs = TrainingArguments(\n    learning_rate = 2e-4,\n"
                "    weight_decay = 0.01,\n    optim = \"adamw_8bit\",\n    lr_scheduler_type = \"linear\",\n)\n```\n")
    info = parse_model_card(training)
    assert info is not None and (info.name, info.variant) == ("adamw", "adamw_8bit")
    commented = training.replace('    optim = "adamw_8bit",', '    #optim = "adamw_8bit",')
    assert parse_model_card(commented) is None
    usage = training.replace("## Training procedure", "## How to use")
    assert parse_model_card(usage) is None


def test_axolotl_config_and_trainer_line_agree() -> None:
    card = ("```yaml\nbase_model: x\nlearning_rate: 0.0002\noptimizer: paged_adamw_8bit\nlr_scheduler: cosine\n```\n"
            "- optimizer: Use OptimizerNames.PAGED_ADAMW_8BIT with betas=(0.9,0.999) and epsilon=1e-08\n")
    info = parse_model_card(card)
    assert info is not None and info.name == "adamw" and info.source.endswith("list)")


@pytest.mark.parametrize(
    ("card", "family"),
    [
        ("Thanks to Adam for training support and to Lion Labs for compute.", None),
        ("The model was trained with Adam for 10 epochs.", "adam"),
        ("Prices are listed in SGD and USD.", None),
        ("- optimizer: {'name': 'Custom>AdamWeightDecay', 'learning_rate': 3e-05, 'beta_1': 0.9}", "adamw"),
        ("- optimizer: None\n- training_precision: float32", None),
        ("Optimizer: custom", None),
        ("Optimizer: see the paper", None),
    ],
)
def test_more_edge_cases(card: str, family: str | None) -> None:
    info = parse_model_card(card)
    assert (info.name if info else None) == family, info


def test_many_mentions_are_bounded() -> None:
    start = time.perf_counter()
    parse_model_card(("Adam " * 1000 + "\n") * 200)
    assert parse_model_card(("We train with AdamW; " * 500 + "\n\n") * 100).name == "adamw"
    assert time.perf_counter() - start < 10
