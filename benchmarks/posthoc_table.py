"""A study's comparison under a post-hoc evaluation protocol (the JSON of bn_posthoc.py) next to the one
it reported: per arm the mean test accuracy with its 95% CI, the seed-paired Δ to plain fine-tuning and the
Holm-corrected p, computed as `replast report` computes them. Prints a markdown table per condition.

    python benchmarks/posthoc_table.py runs/paper benchmarks/results/bn_posthoc_paper_mobilenetv2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from replast.report.build import HEADERS, table_rows
from replast.report.tables import conditions


def re_evaluated(results: pd.DataFrame, rows: list[dict], protocol: str) -> pd.DataFrame:
    """The runs of `results` that `rows` re-evaluated, their accuracies replaced by the protocol's."""
    posthoc = pd.DataFrame(rows).set_index("run")
    out = results[results["hash"].isin(posthoc.index)].copy()
    out["test_acc"] = out["hash"].map(posthoc[f"test_acc_{protocol}"])
    out["final_val_acc"] = out["hash"].map(posthoc[f"val_acc_{protocol}"])
    return out


def markdown(old: pd.DataFrame, new: pd.DataFrame) -> str:
    """The report's first six columns for `new`, and the reported test accuracy and Δ from `old` beside them."""
    reported = {row[0]: row for row in table_rows(old)}
    lines = ["| " + " | ".join([*HEADERS[:6], "as reported: test acc % / Δ pp"]) + " |", "|---" * 7 + "|"]
    for row in table_rows(new):
        was = reported[row[0]]
        lines.append("| " + " | ".join([*row[:6], f"{was[2].split(' ')[0]} / {was[4].split(' ')[0]}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study's output directory (results.csv, curves.csv)")
    parser.add_argument("posthoc", type=Path, help="bn_posthoc.py's JSON for runs of that study")
    parser.add_argument("--protocol", default="augmented")
    args = parser.parse_args()
    results = pd.read_csv(args.study / "results.csv")
    curves = pd.read_csv(args.study / "curves.csv")
    new = re_evaluated(results, json.loads(args.posthoc.read_text()), args.protocol)
    old = {c.title: c.table for c in conditions(results[results["hash"].isin(new["hash"])], curves)}
    for cond in conditions(new, curves):
        print(f"## {cond.title}\n\n{markdown(old[cond.title], cond.table)}\n")


if __name__ == "__main__":
    main()
