"""RetentionSuite, its evaluators, suite files and the regression comparison."""

import json
import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from hf_retain.errors import SuiteError
from hf_retain.evaluation.evaluators import FunctionEvaluator, LossEvaluator, MultipleChoiceEvaluator, QAEvaluator
from hf_retain.evaluation.lm_eval import LMEvalEvaluator
from hf_retain.evaluation.loss import evaluate_loss
from hf_retain.evaluation.results import BenchmarkResult, SuiteResult, compare_to_baseline
from hf_retain.evaluation.scoring import compute_metric, score_continuations
from hf_retain.evaluation.suite import RetentionSuite, check_suite_file

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return the sum of a and b.", "x"]


class FavouriteTokenLM(torch.nn.Module):
    """A fake causal LM whose next-token distribution always prefers one token (for exact expectations)."""

    def __init__(self, favourite: int, vocab: int = 259) -> None:
        super().__init__()
        self.favourite, self.vocab = favourite, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourite] = 5.0
        return SimpleNamespace(logits=logits + self.dummy)


def byte_id(tok, char):
    return tok(char, add_special_tokens=False)["input_ids"][0]


# ---- evaluators ------------------------------------------------------------------------------------------------
def test_loss_and_perplexity_evaluators_match_evaluate_loss(tiny_model, tiny_tokenizer):
    expected = evaluate_loss(tiny_model, TEXTS, tiny_tokenizer, max_length=32)
    assert LossEvaluator(TEXTS, max_length=32)(tiny_model, tiny_tokenizer) == pytest.approx(expected)
    ppl = LossEvaluator(TEXTS, perplexity=True, max_length=32, tokenizer=tiny_tokenizer)(tiny_model)
    assert ppl == pytest.approx(math.exp(expected))
    assert LossEvaluator(TEXTS).higher_is_better is False


def test_score_continuations_matches_a_manual_log_likelihood(tiny_model, tiny_tokenizer):
    enc = lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [(enc("Hello"), enc(" world")), (enc("a much longer context here"), enc("!"))]
    got = score_continuations(tiny_model, pairs, batch_size=2)
    for (context, continuation), (logprob, n, _) in zip(pairs, got):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            lp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
        manual = sum(lp[len(context) - 1 + k, t].item() for k, t in enumerate(continuation))
        assert n == len(continuation) and logprob == pytest.approx(manual, abs=1e-4)


def test_multiple_choice_picks_the_most_likely_choice(tiny_tokenizer):
    model = FavouriteTokenLM(byte_id(tiny_tokenizer, "a"))
    rows = [
        {"question": "Pick:", "choices": ["aaa", "bbb"], "answer": 0},  # right
        {"question": "Pick:", "choices": ["bbb", "aaa"], "answer": 0},  # wrong: the model prefers 'aaa'
        {"question": "Pick:", "choices": ["ccc", "aaaa", "b"], "answer": "aaaa"},  # answer given as text
        {"question": "Pick:", "choices": ["ab", "ba"], "answer": 1},  # tie broken by first: predicts 0, wrong
    ]
    ev = MultipleChoiceEvaluator(rows, tokenizer=tiny_tokenizer)
    assert ev(model) == pytest.approx(2 / 4)
    assert ev.higher_is_better is True
    # Unnormalised sums penalise long choices; per-token normalisation does not.
    long_rows = [{"question": "Q", "choices": ["ab", "aaaaaaaa"], "answer": 1}]
    assert MultipleChoiceEvaluator(long_rows, normalize=False)(model, tiny_tokenizer) == 0.0
    assert MultipleChoiceEvaluator(long_rows, normalize=True)(model, tiny_tokenizer) == 1.0


def test_multiple_choice_rejects_bad_rows():
    with pytest.raises(SuiteError, match="empty"):
        MultipleChoiceEvaluator([])
    with pytest.raises(SuiteError, match="no column 'choices'"):
        MultipleChoiceEvaluator([{"question": "q", "options": ["a", "b"], "answer": 0}])
    with pytest.raises(SuiteError, match="not one of the row's choices"):
        MultipleChoiceEvaluator([{"question": "q", "choices": ["a", "b"], "answer": "c"}])
    with pytest.raises(SuiteError, match="outside"):
        MultipleChoiceEvaluator([{"question": "q", "choices": ["a", "b"], "answer": 5}])


def test_qa_score_mode_is_greedy_match(tiny_tokenizer):
    model = FavouriteTokenLM(byte_id(tiny_tokenizer, "a"))
    rows = [{"question": "Say a:", "answer": "aaa"}, {"question": "Say b:", "answer": "aba"}]
    assert QAEvaluator(rows, tokenizer=tiny_tokenizer)(model) == 0.5


def test_qa_generate_and_score_modes_agree_on_the_models_own_greedy_answer(tiny_model, tiny_tokenizer):
    question = "The capital of France is"
    ids = torch.tensor([tiny_tokenizer(question, add_special_tokens=False)["input_ids"]])
    out = tiny_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=4,
                              pad_token_id=0)
    greedy = out[0, ids.shape[1]:].tolist()
    if any(t < 3 for t in greedy):  # a special token would not round-trip through text; skip rather than lie
        pytest.skip("the random tiny model's greedy continuation contains a special token")
    answer = tiny_tokenizer.decode(greedy)
    rows = [{"question": question, "answer": answer}, {"question": question, "answer": answer[::-1] + "#"}]
    score = QAEvaluator(rows, tokenizer=tiny_tokenizer)(tiny_model)
    generated = QAEvaluator(rows, mode="generate", max_new_tokens=len(greedy), stop=None)(tiny_model, tiny_tokenizer)
    assert score == generated == 0.5


def test_function_evaluator_and_plain_callables():
    suite = RetentionSuite({"const": lambda model, tok: 0.25,
                            "lossish": FunctionEvaluator(lambda m, t: 3.0, higher_is_better=False)})
    result = suite.evaluate(model=None)
    assert result.scores == {"const": 0.25, "lossish": 3.0}
    assert result["const"].higher_is_better and not result["lossish"].higher_is_better
    with pytest.raises(SuiteError, match="callable"):
        FunctionEvaluator(3.0)


def test_suite_records_errors_and_nan_without_stopping():
    def broken(model, tok):
        raise RuntimeError("dataset server down")

    suite = RetentionSuite({"ok": lambda m, t: 1.0, "broken": broken, "nan": lambda m, t: math.nan})
    result = suite.evaluate(model=None)
    assert result["ok"].ok and result["ok"].score == 1.0
    assert not result["broken"].ok and "dataset server down" in result["broken"].error
    assert math.isnan(result["broken"].score)
    assert not result["nan"].ok and result["nan"].error is None
    with pytest.raises(RuntimeError, match="dataset server down"):
        suite.evaluate(model=None, on_error="raise")


def test_suite_rejects_duplicates_empty_and_unknown_thresholds():
    with pytest.raises(SuiteError, match="at least one"):
        RetentionSuite([])
    with pytest.raises(SuiteError, match="two benchmarks named"):
        RetentionSuite([FunctionEvaluator(lambda m, t: 1, name="a"), FunctionEvaluator(lambda m, t: 2, name="a")])
    with pytest.raises(SuiteError, match="not in the suite"):
        RetentionSuite({"a": lambda m, t: 1}, thresholds={"b": 0.1})


def test_empty_eval_sets_are_clear_errors(tiny_model, tiny_tokenizer):
    with pytest.raises(SuiteError, match="empty"):
        LossEvaluator([])
    with pytest.raises(SuiteError, match="empty"):
        QAEvaluator([])
    # Texts too short to predict anything: evaluate_loss says so; the suite records it as the benchmark's error.
    result = RetentionSuite([LossEvaluator(["a"], name="short")]).evaluate(tiny_model, tiny_tokenizer)
    assert "at least 2 tokens" in result["short"].error


# ---- metrics -----------------------------------------------------------------------------------------------------
def test_compute_metric_local_callable_and_evaluate_module():
    assert compute_metric("accuracy", [1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert compute_metric("exact_match", [" Paris", "rome "], ["Paris", "Rome"]) == 0.5
    assert compute_metric(lambda p, r: 0.75, [1], [1]) == 0.75

    class Module:  # the shape of an evaluate.EvaluationModule
        def compute(self, predictions, references):
            return {"f1": 0.4}

    assert compute_metric(Module(), [1], [1]) == 0.4
    with pytest.raises(ValueError, match="2 predictions for 1"):
        compute_metric("accuracy", [1, 2], [1])


def test_compute_metric_explains_offline_evaluate_failures(monkeypatch):
    evaluate = pytest.importorskip("evaluate")

    def offline(name, *args, **kwargs):
        raise FileNotFoundError(f"Couldn't find a module script for {name}")

    monkeypatch.setattr(evaluate, "load", offline)
    with pytest.raises(SuiteError, match="Offline, evaluate can only load"):
        compute_metric("bleu", ["a"], ["a"])


# ---- lm-evaluation-harness adapter ----------------------------------------------------------------------------------
def test_lm_eval_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(SuiteError, match="pip install lm_eval"):
        LMEvalEvaluator("arc_easy")(torch.nn.Linear(1, 1), object())


def test_lm_eval_adapter_reads_the_requested_metric_and_direction(monkeypatch):
    calls = {}

    class FakeHFLM:
        def __init__(self, pretrained, tokenizer, batch_size, device):
            calls["lm"] = (pretrained, tokenizer, batch_size, device)

    def simple_evaluate(model, tasks, num_fewshot, limit, task_manager, log_samples, bootstrap_iters):
        calls["eval"] = (tasks, num_fewshot, limit)
        return {"results": {"toy": {"alias": "toy", "acc,none": 0.6, "acc_stderr,none": 0.1, "ppl,none": 12.0}},
                "higher_is_better": {"toy": {"acc": True, "ppl": False}}}

    lm_eval = types.ModuleType("lm_eval")
    lm_eval.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = FakeHFLM
    for name, module in {"lm_eval": lm_eval, "lm_eval.models": models, "lm_eval.models.huggingface": hf}.items():
        monkeypatch.setitem(sys.modules, name, module)
    model, tok = torch.nn.Linear(1, 1), object()
    acc = LMEvalEvaluator("toy", limit=10, num_fewshot=0)
    assert acc(model, tok) == 0.6 and acc.higher_is_better is True and acc.name == "toy"
    assert calls["eval"] == (["toy"], 0, 10) and calls["lm"][0] is model and calls["lm"][1] is tok
    ppl = LMEvalEvaluator("toy", metric="ppl", name="toy_ppl")
    assert ppl(model, tok) == 12.0 and ppl.higher_is_better is False
    with pytest.raises(SuiteError, match=r"no metric 'f1'; it reports \['acc', 'ppl'\]"):
        LMEvalEvaluator("toy", metric="f1")(model, tok)


# ---- suite files -------------------------------------------------------------------------------------------------
def score_for_suite_file(model, tokenizer):
    return 0.5


def test_suite_yaml_builds_every_kind(tmp_path, tiny_model, tiny_tokenizer):
    (tmp_path / "general.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS), encoding="utf-8")
    (tmp_path / "suite.yaml").write_text(
        f"""
benchmarks:
  general_loss:
    type: loss
    data: general.jsonl        # relative to the suite file
    max_rows: 2
    max_length: 32
    threshold: 0.05
  general_ppl:
    type: perplexity
    data: ["Some inline held-out text.", "More text."]
  choices:
    type: multiple_choice
    data:
      - {{question: "1 + 1 =", choices: [" 2", " 3"], answer: 0}}
    normalize: true
  trivia:
    type: qa
    data: [{{question: "Capital of France:", answer: " Paris"}}]
  custom:
    type: function
    function: {__name__}:score_for_suite_file
    higher_is_better: false
""", encoding="utf-8")
    suite = RetentionSuite.from_yaml(tmp_path / "suite.yaml")
    assert suite.names == ["general_loss", "general_ppl", "choices", "trivia", "custom"]
    assert suite.thresholds == {"general_loss": 0.05}
    assert len(suite.evaluators["general_loss"].data) == 2
    result = suite.evaluate(tiny_model, tiny_tokenizer)
    assert all(r.ok for r in result), result
    assert result["general_loss"].score == pytest.approx(
        evaluate_loss(tiny_model, TEXTS[:2], tiny_tokenizer, max_length=32), rel=1e-5)
    assert result["custom"].score == 0.5 and not result["custom"].higher_is_better
    assert RetentionSuite.lookup(str(tmp_path / "suite.yaml")).names == suite.names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("benchmarks:\n  a: {type: accuracyy, data: [x]}", r"unknown evaluator type 'accuracyy'.*Known types"),
        ("benchmarks:\n  a: {type: los, data: [x]}", r"Did you mean 'loss'"),
        ("benchmarks:\n  a: {type: loss, data: []}", "empty"),
        ("benchmarks:\n  a: {type: loss}", "needs 'data'"),
        ("benchmarks:\n  a: {type: loss, data: [x], batchsize: 3}", "setting the evaluator does not take"),
        ("benchmarks:\n  a: {type: function, function: nowhere}", "package.module:function"),
        ("benchmarks:\n  a: {type: loss, data: missing.jsonl}", "does not exist"),
        ("benchmarks: {}", "non-empty"),
        ("tests: []", "'benchmarks' key"),
        ("benchmarks:\n  a: {type: loss, data: [x]}\nthreshold: 2", "unknown top-level keys"),
        ("benchmarks: [oops", "not valid UTF-8 YAML"),
    ],
)
def test_bad_suite_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SuiteError, match=message):
        RetentionSuite.from_yaml(path)


def test_missing_suite_file():
    with pytest.raises(SuiteError, match="does not exist"):
        RetentionSuite.from_yaml("no/such/suite.yaml")
    with pytest.raises(SuiteError, match="neither a suite built in this process"):
        RetentionSuite.lookup("suite:000000000000")


# ---- comparison --------------------------------------------------------------------------------------------------
def result_of(**scores):
    return SuiteResult({n: BenchmarkResult(n, s, higher) for n, (s, higher) in scores.items()})


def test_compare_relative_absolute_and_directions():
    base = result_of(loss=(2.0, False), acc=(0.50, True))
    now = result_of(loss=(2.03, False), acc=(0.48, True))
    checks = {c.name: c for c in compare_to_baseline(base, now, threshold=0.02)}
    assert checks["loss"].status == "ok" and checks["loss"].regression == pytest.approx(0.015)
    assert checks["acc"].status == "regressed" and checks["acc"].regression == pytest.approx(0.04)
    assert checks["acc"].delta == pytest.approx(-0.02)
    absolute = {c.name: c for c in compare_to_baseline(base, now, threshold=0.025, relative=False)}
    assert absolute["loss"].status == "regressed" and absolute["acc"].status == "ok"
    per = {c.name: c for c in compare_to_baseline(base, now, threshold=0.02, per_benchmark_thresholds={"acc": 0.05})}
    assert per["acc"].status == "ok" and per["acc"].threshold == 0.05
    better = {c.name: c for c in compare_to_baseline(base, result_of(loss=(1.0, False), acc=(0.9, True)))}
    assert all(c.status == "ok" and c.regression < 0 for c in better.values())


def test_compare_nan_errors_and_missing_baselines():
    base = result_of(a=(1.0, True), b=(1.0, True))
    now = SuiteResult({"a": BenchmarkResult("a", math.nan, True),
                       "b": BenchmarkResult("b", math.nan, True, error="RuntimeError: boom"),
                       "c": BenchmarkResult("c", 1.0, True)})
    checks = {c.name: c for c in compare_to_baseline(base, now)}
    assert checks["a"].status == "nan" and checks["a"].regressed and "NaN is treated as a regression" in \
        checks["a"].message
    assert checks["b"].status == "error" and not checks["b"].regressed and "boom" in checks["b"].message
    assert checks["c"].status == "no-baseline"


def test_suite_result_json_round_trip_with_nan(tmp_path):
    result = SuiteResult({"a": BenchmarkResult("a", math.nan, True, 0.1, "boom"),
                          "b": BenchmarkResult("b", 2.0, False)}, step=7)
    back = SuiteResult.load(result.save(tmp_path / "scores.json"))
    assert back.step == 7 and math.isnan(back["a"].score) and back["a"].error == "boom"
    assert back["b"] == result["b"]
    flat = SuiteResult.from_dict({"x": {"score": 1.5, "higher_is_better": False}})
    assert flat["x"].score == 1.5 and not flat["x"].higher_is_better
    with pytest.raises(SuiteError, match="higher_is_better"):
        SuiteResult.from_dict({"x": 1.5})


def test_builtin_corpora_default_to_their_held_out_split():
    from hf_retain import builtin_corpora

    suite = RetentionSuite.from_config({"benchmarks": {"general": {"type": "loss", "data": "builtin:general",
                                                                   "max_rows": 4}}})
    assert list(suite.evaluators["general"].data["text"]) == builtin_corpora()["general"]["eval"][:4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": 3, "results": [{"name": "a", "score": 1.0, "higher', "not valid JSON"),  # truncated mid-write
        ("\x00\x01garbage", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"results": [{"name": "a", "score": "high", "higher_is_better": true}]}', "must be a number or null"),
        ('{"results": [{"name": "a", "score": 1.0, "higher_is_better": "yes"}]}', "must be true or false"),
        ('{"results": [{"score": 1.0, "higher_is_better": true}]}', "must be {'name'"),
        ('{"step": null, "results": []}', "holds no benchmark scores"),
    ],
)
def test_corrupt_scores_files_are_suite_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "scores.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SuiteError, match=message) as err:
        SuiteResult.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SuiteError, match="does not exist"):
        SuiteResult.load(tmp_path / "missing.json")


def test_scores_file_reads_a_gate_reports_baseline_or_candidate(tmp_path):
    base = SuiteResult({"a": BenchmarkResult("a", 1.0, True)})
    cand = SuiteResult({"a": BenchmarkResult("a", 0.5, True)})
    path = tmp_path / "gate.json"
    path.write_text(json.dumps({"checks": [], "baseline": base.to_dict(), "candidate": cand.to_dict()}))
    assert SuiteResult.load(path)["a"].score == 1.0
    assert SuiteResult.load(path, section="candidate")["a"].score == 0.5


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    SuiteResult({"a": BenchmarkResult("a", 1.0, True)}).save(tmp_path / "scores.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_check_suite_file_returns_local_data_files_without_loading_them(tmp_path, monkeypatch):
    import hf_retain.evaluation.suite as suite_module

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "general.jsonl").write_text('{"text": "x y"}\n', encoding="utf-8")
    (tmp_path / "suite.yaml").write_text(
        """
benchmarks:
  here: {type: loss, data: data/general.jsonl}
  missing: {type: qa, data: qa_missing.jsonl}
  builtin: {type: loss, data: builtin:general}
  hub: {type: multiple_choice, data: allenai/ai2_arc, config: ARC-Easy}
  inline: {type: qa, data: [{question: q, answer: a}]}
  harness: {type: lm_eval, task: arc_easy}
  mine: {type: function, function: my_package.checks:score}
""", encoding="utf-8")

    def no_loading(*args, **kwargs):
        raise AssertionError("check_suite_file loaded a dataset")

    monkeypatch.setattr(suite_module, "load_text_dataset", no_loading)
    files = check_suite_file(tmp_path / "suite.yaml")
    assert files == [tmp_path / "data" / "general.jsonl", tmp_path / "qa_missing.jsonl"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("benchmarks:\n  a: {type: los, data: x.jsonl}", r"Did you mean 'loss'"),
        ("benchmarks:\n  a: {type: qa}", "needs 'data'"),
        ("benchmarks:\n  a: {type: loss, data: x.jsonl, threshold: lots}", "threshold='lots'"),
        ("benchmarks:\n  a: {type: loss, data: x.jsonl, max_rows: 0}", "max_rows=0"),
        ("benchmarks:\n  a: {type: function, function: nowhere}", "package.module:function"),
        ("benchmarks: [oops", "not valid UTF-8 YAML"),
        ("tests: []", "'benchmarks' key"),
    ],
)
def test_check_suite_file_rejects_what_from_yaml_would(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    for check in (check_suite_file, RetentionSuite.from_yaml):
        with pytest.raises(SuiteError, match=message) as err:
            check(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_check_suite_file_names_a_missing_suite():
    with pytest.raises(SuiteError, match=r"Suite file no/such/suite.yaml does not exist"):
        check_suite_file("no/such/suite.yaml")
