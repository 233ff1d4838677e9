"""`hf-retain merge CONFIG.yaml`: merge fine-tunes of one base, optionally scoring what each merge kept and forgot.

    hf-retain merge recipes/merge_ties.yaml                                # one merge into output_dir
    hf-retain merge recipes/merge_ties.yaml --evaluate suite.yaml          # + score base, inputs and the merge
    hf-retain merge recipes/merge_ties.yaml --evaluate suite.yaml --sweep  # every sweep combination; Pareto front

The config format is `hf_retain.merging.config`'s (mergekit-like). With ``--sweep`` each combination of the
config's ``sweep:`` values is merged into ``OUTPUT_DIR/<tag>`` and the report is written into ``OUTPUT_DIR``; without
it the merge is ``OUTPUT_DIR`` and the report goes to ``--report`` (default ``OUTPUT_DIR_eval``). Reports are
``merge_report.{md,json,png}``. Exit 0 on success, 2 when the config, models or suite cannot be used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "run_merge"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge fine-tunes of one base (TIES, DARE, SLERP, task arithmetic) and score what they kept",
        description="Merge the models of a mergekit-like CONFIG.yaml tensor by tensor into a loadable checkpoint; "
                    "with --evaluate, score the base, each input and the merge with a retention suite; with "
                    "--sweep, try every combination of the config's sweep values and recommend a merge on the "
                    "Pareto front of per-domain gain vs general drift.",
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help="merge config (see recipes/merge_*.yaml)")
    parser.add_argument("--evaluate", metavar="SUITE.yaml", default=None,
                        help="suite YAML to score base, inputs and merges (default: the config's evaluate.suite "
                             "when --sweep is given)")
    parser.add_argument("--sweep", action="store_true", help="merge and score every combination of sweep: values")
    parser.add_argument("--output-dir", default=None, help="where to write (overrides the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in the output folder")
    parser.add_argument("--report", default=None, metavar="DIR", help="folder for merge_report.{md,json,png}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_merge(args.config, evaluate=args.evaluate, sweep=args.sweep, output_dir=args.output_dir,
              overwrite=args.overwrite, report_dir=args.report)
    return 0


def run_merge(config_path: str, *, evaluate: str | None = None, sweep: bool = False, output_dir: str | None = None,
              overwrite: bool = False, report_dir: str | None = None, echo: Any = print) -> Any:
    """What ``hf-retain merge`` does; returns the `MergeReport` when it scored, else the `MergeResult`."""
    from hf_retain.errors import RecipeError
    from hf_retain.merging.checkpoint import merge_models
    from hf_retain.merging.config import load_merge_config
    from hf_retain.merging.sweep import evaluate_merges

    config = load_merge_config(config_path)
    out = output_dir or config.output_dir
    if not out:
        raise RecipeError(f"Merge config {config_path} sets no output_dir; add `output_dir: merged/NAME` or pass "
                          "--output-dir.")
    suite = evaluate or (config.suite if sweep else None)
    if sweep and not config.sweep:
        raise RecipeError(f"--sweep: merge config {config_path} has no sweep: section (e.g. sweep: {{density: "
                          "[0.3, 0.6]}}).")
    if sweep and not suite:
        raise RecipeError("--sweep picks merges by their scores: pass --evaluate SUITE.yaml (or set evaluate.suite "
                          "in the merge config).")
    if suite:  # check the suite before spending time on merges
        from hf_retain.evaluation.suite import check_suite_file

        check_suite_file(suite)
    candidates = config.candidates() if sweep else [("merge", config)]
    merges = []
    for tag, candidate in candidates:
        target = Path(out) / tag if sweep else Path(out)
        result = merge_models(candidate.base, candidate.models, candidate.method, output_dir=target,
                              overwrite=overwrite, **candidate.merge_kwargs())
        echo(f"merged {len(candidate.models)} models by {candidate.method} "
             f"({', '.join(f'{k}={v}' for k, v in _shown(candidate).items())}) into {result.output_dir}")
        merges.append((tag, str(result.output_dir), _shown(candidate)))
    if not suite:
        return result
    inputs = list(zip(_short_names(config.models), config.models))
    report = evaluate_merges(suite, config.base, inputs, merges, general=config.general,
                             max_general_drift=config.max_general_drift, tokenizer=config.tokenizer)
    where = Path(report_dir) if report_dir else (Path(out) if sweep else Path(str(Path(out)) + "_eval"))
    paths = report.save(where)
    echo(report.to_markdown())
    if sweep:
        echo(f"Pareto front: {', '.join(report.front) or 'none'}")
        if report.recommended:
            echo(f"Recommended: {report.recommended} -> {Path(out) / report.recommended} ({report.rule})")
        else:
            echo(f"No merge recommended ({report.rule}).")
    echo(f"report written to {paths['markdown']}, {paths['json'].name} and {paths['png'].name}")
    return report


def _short_names(paths: list[str]) -> list[str]:
    """The fewest trailing path parts that tell the inputs apart (``python/round1`` and ``c/round1``)."""
    parts = [Path(p).parts or (p,) for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def _shown(config: Any) -> dict[str, Any]:
    values = {"weights": config.weights, "density": config.density, "t": config.t}
    return {k: v for k, v in values.items() if v is not None}
