"""Ray Job (or plain script): per-problem agreement tables for analysts, as Parquet and CSV.

For each variant against the baseline, on the problems both ran:

    problems.{parquet,csv}             one row per (bench, variant, problem): both scores, the outcome
                                       (both_correct, both_wrong, lost, gained)
    problems_wide.{parquet,csv}        one row per (bench, problem): the baseline's score, then each
                                       variant's score and outcome side by side
    agreement.{parquet,csv}            per bench and variant: outcome counts and shares, lost/gained ids
    agreement_by_domain.{parquet,csv}  the same per domain, for benches whose problems carry one

    python jobs/export_agreement.py RESULTS --baseline 128e --out agreement/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
from jobkit import refused

from omk_ray.exits import ExitCode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results folder")
    parser.add_argument("--baseline", required=True, help="the variant the others are compared with")
    parser.add_argument("--variant", action="append", help="only these variants (repeatable; default: all others)")
    parser.add_argument("--bench", action="append", help="only these benches (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default: RESULTS/agreement)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="pair samples of different cohorts or recipes anyway")
    args = parser.parse_args(argv)

    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.samples import AnalysisError

    try:
        comparison = compare(args.results, CompareOptions(baseline=args.baseline, variants=args.variant,
                                                          benches=args.bench, allow_mismatch=args.allow_mismatch))
    except AnalysisError as err:
        return refused(err)
    out = args.out or args.results / "agreement"
    out.mkdir(parents=True, exist_ok=True)
    problems = comparison.tables["problems"]
    tables = {
        "problems": problems,
        "problems_wide": wide(problems, comparison.variants),
        "agreement": comparison.tables["agreement"],
        "agreement_by_domain": comparison.tables["agreement_by_domain"],
    }
    for name, table in tables.items():
        pq.write_table(table, out / f"{name}.parquet")
        pv.write_csv(flat(table), out / f"{name}.csv")
        print(f"{out / name}.{{parquet,csv}}: {table.num_rows} rows", flush=True)
    return ExitCode.OK


def wide(problems: pa.Table, variants: list[str]) -> pa.Table:
    """One row per (bench, problem): the baseline's score and each variant's score and outcome."""
    rows: dict[tuple[str, str], dict] = {}
    for r in problems.to_pylist():
        row = rows.setdefault((r["bench"], r["doc_id"]), {
            "bench": r["bench"], "doc_id": r["doc_id"], "domain": r.get("domain"), "subdomain": r.get("subdomain"),
            "baseline_score": r.get("baseline_score"),
        })
        row[f"{r['variant']}_score"] = r.get("variant_score")
        row[f"{r['variant']}_outcome"] = r["outcome"]
    schema = pa.schema([("bench", pa.string()), ("doc_id", pa.string()), ("domain", pa.string()),
                        ("subdomain", pa.string()), ("baseline_score", pa.float64())]
                       + [(f"{v}_{k}", pa.float64() if k == "score" else pa.string())
                          for v in variants for k in ("score", "outcome")])
    return pa.Table.from_pylist(list(rows.values()), schema=schema)  # absent cells are null


def flat(table: pa.Table) -> pa.Table:
    """CSV has no lists: list columns become space-separated text."""
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            text = pa.array([" ".join(map(str, v)) if v is not None else None for v in table.column(i).to_pylist()],
                            pa.string())
            table = table.set_column(i, field.name, text)
    return table


if __name__ == "__main__":
    sys.exit(main())
