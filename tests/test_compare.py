"""Side-by-side comparisons: arm specs, per-arm configs, reports, merging, and a real 2-round run."""

import json
import math

import pytest
import yaml

from hf_retain import RetentionConfig
from hf_retain.bench import pareto_front
from hf_retain.compare import ArmRecord, ArmSpecError, Comparison, arm_retention, merge_arm_files, parse_arm
from hf_retain.evaluation.report import ArmResult


@pytest.mark.parametrize(
    ("spec", "retention", "training"),
    [
        ("adamw", {"optimizer": "adamw"}, {}),
        ("Muon", {"optimizer": "muon"}, {}),
        ("adamw+ewc=1e4", {"optimizer": "adamw", "ewc_mode": "ewc", "ewc_lambda": 1e4}, {}),
        ("adamw+l2sp", {"optimizer": "adamw", "ewc_mode": "l2sp", "ewc_lambda": None}, {}),
        ("adamw+replay=0.5+distill", {"optimizer": "adamw", "replay_ratio": 0.5, "distill_alpha": None,
                                      "distill_on": "replay"}, {}),
        ("sgd+distill=2", {"optimizer": "sgd", "distill_alpha": 2.0, "distill_on": "train"}, {}),
        ("adamw+lr=3e-4", {"optimizer": "adamw"}, {"learning_rate": 3e-4}),
    ],
)
def test_parse_arm(spec, retention, training):
    arm = parse_arm(spec)
    assert arm.retention == retention and arm.training == training and arm.name == spec


@pytest.mark.parametrize(("spec", "fragment"), [
    ("", "not of the form"), ("replay", "must start with an optimizer"), ("adamw+dropout", "unknown part"),
    ("adamw+ewc=lots", "needs a number"), ("adamw++ewc", "not of the form"), ("adamw+lr", "unknown part"),
])
def test_bad_arm_specs(spec, fragment):
    with pytest.raises(ArmSpecError, match=fragment):
        parse_arm(spec)


def test_arm_retention_turns_off_what_the_arm_does_not_name():
    base = RetentionConfig(replay_ratio=0.4, replay_dataset="g.jsonl", ewc_lambda=50.0, distill_alpha=0.5)
    plain = arm_retention(parse_arm("adamw"), base)
    assert (plain.replay_ratio, plain.ewc_lambda, plain.distill_alpha) == (0.0, 0.0, 0.0)
    assert plain.optimizer == "adamw" and plain.replay_dataset == "g.jsonl"
    ewc = arm_retention(parse_arm("muon+ewc"), base)
    assert ewc.ewc_lambda == 50.0 and ewc.optimizer == "muon"  # the recipe's setting when the arm gives none
    mixed = arm_retention(parse_arm("adamw+replay+distill"), base)
    assert mixed.replay_ratio == 0.4 and mixed.distill_alpha == 0.5 and mixed.distill_on == "replay"
    defaults = arm_retention(parse_arm("adamw+ewc+replay"), RetentionConfig(replay_dataset="g.jsonl"))
    assert defaults.ewc_lambda == 1e4 and defaults.replay_ratio == 0.3


def test_pareto_front():
    arms = [ArmResult("plain", 2.0, 3.0, 4.0, 1.0), ArmResult("low-lr", 2.0, 2.5, 4.0, 1.5),
            ArmResult("replay", 2.0, 2.2, 4.0, 1.1), ArmResult("bad", 2.0, 3.1, 4.0, 1.6)]
    assert pareto_front(arms) == ["plain", "replay"]


def _record(name, drift):
    return ArmRecord(arm=name, tasks=["a", "b"], task_losses=[[3.0, 3.0], [1.0, 2.8], [1.5 + drift, 1.2]],
                     general_losses=[2.0, 2.0 + drift, 2.0 + 2 * drift], weight_drift=[0.0, 0.1, 0.2],
                     seconds=[1.0, 1.0], methods=[])


def test_comparison_report_metrics_and_merge(tmp_path):
    records = [_record("adamw", 0.3), _record("adamw+replay", 0.05)]
    summary = records[0].summary()
    assert summary["bwt"] == pytest.approx(-(1.8 - 1.0))  # loss on task a rose from 1.0 to 1.8
    assert summary["fwt"] == pytest.approx(3.0 - 2.8)  # training task a lowered task b's loss by 0.2
    assert summary["general_drift"] == pytest.approx(0.6) and summary["learning"] == pytest.approx(2.0)
    comparison = Comparison(records)
    assert [arm for arm, _ in comparison.ranked()] == ["adamw+replay", "adamw"]
    paths = comparison.save(tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "| 1 | adamw+replay |" in markdown and "## adamw" in markdown
    assert {"learning_vs_forgetting", "drift_per_round"} <= set(paths)
    for record in records:
        (tmp_path / f"arm-{record.arm}.json").write_text(json.dumps(record.__dict__))
    merged = merge_arm_files([tmp_path / "arm-adamw.json", tmp_path / "arm-adamw+replay.json"], tmp_path / "merged")
    assert [r.arm for r in merged.records] == ["adamw", "adamw+replay"]
    again = Comparison.from_dict(json.loads((tmp_path / "merged" / "report.json").read_text()))
    assert again.records[1].summary()["general_drift"] == pytest.approx(0.1)


@pytest.mark.slow
def test_two_rounds_two_arms_end_to_end(tmp_path):
    """Arms differing only in LR see the same data; the higher LR moves the weights further."""
    from hf_retain.cli import main

    def texts(word, n):
        return "\n".join(json.dumps({"text": f"{word} {i} " * 6}) for i in range(n))

    for name in ("t1", "t2", "general"):
        (tmp_path / f"{name}.jsonl").write_text(texts(name, 64))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": "builtin:tiny-llama-init", "dataset_name": str(tmp_path / "t1.jsonl"),
        "tasks": [{"name": "t1", "dataset_name": str(tmp_path / "t1.jsonl")},
                  {"name": "t2", "dataset_name": str(tmp_path / "t2.jsonl")}],
        "general_eval_dataset": str(tmp_path / "general.jsonl"), "general_eval_split": "train",
        "max_eval_samples": 16, "output_dir": str(tmp_path / "unused"), "max_steps": 3,
        "per_device_train_batch_size": 4, "max_length": 32, "report_to": [], "use_cpu": True,
        "save_strategy": "no", "consistency_policy": "off", "record_lineage": False, "learning_rate": 1e-3,
    }))
    out = tmp_path / "out"
    assert main(["compare", str(recipe), "--arms", "adamw", "adamw+lr=1e-5", "--output", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    fast, slow = data["arms"]
    assert len(fast["task_losses"]) == 3 and len(fast["task_losses"][0]) == 2  # before + 2 rounds, 2 tasks
    assert fast["task_losses"][0] == pytest.approx(slow["task_losses"][0])  # same start
    assert fast["weight_drift"][-1] > 10 * slow["weight_drift"][-1]
    assert not math.isnan(fast["summary"]["bwt"])
    assert (out / "matrix_adamw.png").is_file() and (out / "arm-adamw.json").is_file()


def test_pareto_front_is_taken_within_each_pretrained_base():
    """Arms on differently pretrained bases start from different losses: each base gets its own front."""
    from hf_retain.bench import _by_pretraining

    # (forgetting, learning): plain (0.5, 2.5), replay (0.1, 2.6), muon->adamw (0.4, 3.0), muon->muon (0.3, 2.5)
    arms = [ArmResult("adamw->adamw", 2.0, 2.5, 4.0, 1.5), ArmResult("adamw->adamw+replay", 2.0, 2.1, 4.0, 1.4),
            ArmResult("muon->adamw", 2.5, 2.9, 4.0, 1.0), ArmResult("muon->muon", 2.5, 2.8, 4.0, 1.5)]
    keys = {a.name: (a.name.split("->")[0], "", "") for a in arms}
    fronts = {label: pareto_front(group) for label, group in _by_pretraining(arms, keys).items()}
    assert fronts == {" (pretrained with adamw)": ["adamw->adamw+replay"],
                      " (pretrained with muon)": ["muon->adamw", "muon->muon"]}
    assert pareto_front(arms) == ["adamw->adamw+replay", "muon->adamw"]  # one front over both bases hides muon->muon
    assert list(_by_pretraining(arms[:2], keys)) == [""]
