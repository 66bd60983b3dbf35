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

from replast.report.tables import conditions


def re_evaluated(results: pd.DataFrame, rows: list[dict], protocol: str) -> pd.DataFrame:
    """The runs of `results` that `rows` re-evaluated, their accuracies replaced by the protocol's."""
    posthoc = pd.DataFrame(rows).set_index("run")
    out = results[results["hash"].isin(posthoc.index)].copy()
    out["test_acc"] = out["hash"].map(posthoc[f"test_acc_{protocol}"])
    out["final_val_acc"] = out["hash"].map(posthoc[f"val_acc_{protocol}"])
    return out


def _pct(value: float, sign: bool = False) -> str:
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def markdown(old: pd.DataFrame, new: pd.DataFrame) -> str:
    lines = ["| Strategy | n | Test acc % [95% CI] | Val acc % | Δ vs none, pp [95% CI] | p (Holm) "
             "| as reported: test acc % / Δ pp |", "|---|---|---|---|---|---|---|"]
    reported = old.set_index("arm")
    for row in new.itertuples():
        was = reported.loc[row.arm]
        delta = "—" if pd.isna(row.delta) else (
            f"{_pct(row.delta, True)} [{_pct(row.delta_low, True)}, {_pct(row.delta_high, True)}]")
        p = "—" if pd.isna(row.p_holm) else f"{row.p_holm:.3f}"
        was_delta = "—" if pd.isna(was.delta) else _pct(was.delta, True)
        lines.append(f"| {row.arm} | {row.n} | {_pct(row.acc)} [{_pct(row.acc_low)}, {_pct(row.acc_high)}] "
                     f"| {_pct(row.val_acc)} | {delta} | {p} | {_pct(was.acc)} / {was_delta} |")
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
