"""Ray Job: the overnight canonical rerun.

Checks the config against its lock (`omk-ray lock CONFIG`) and refuses to start on any drift,
runs the locked suite for the listed variants (each behind its canary) into ROOT/<date>/, compares
them with the baseline (ROOT/<date>/report/) and each with itself in the previous night's
folder (ROOT/<date>/vs-<previous date>/<variant>/), and writes ROOT/<date>/rerun.json.

    ray job submit --address http://localhost:8265 --working-dir . -- \\
        python jobs/canonical_rerun.py configs/canonical.yaml --root /home/ray/results/canonical \\
        --baseline 128e --variant 128e --variant v4

Exit code 0 when all is well; 1 when samples failed; 2 when refused (drifted lock, bad config,
grid that cannot fit); 3 on a canary failure; 4 on a significant regression against the
previous night (a drop with Holm-corrected p < --alpha, or larger than --max-drop-pp).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from jobkit import Refused, cluster_args, connect_and_place, load, print_run, refused

from omk_ray.exits import ExitCode
from omk_ray.results.store import ResultsStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the canonical suite's grid config (locked)")
    parser.add_argument("--root", type=Path, required=True, help="folder of the nightly results folders")
    parser.add_argument("--variant", action="append", help="variants to rerun (repeatable; default: all)")
    parser.add_argument("--baseline", help="variant the others are compared with (default: the first listed)")
    parser.add_argument("--date", default=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                        help="name of tonight's folder (default: today, UTC)")
    parser.add_argument("--lock", type=Path, help="lock file (default: next to the config)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of a regression")
    parser.add_argument("--max-drop-pp", type=float, help="also a regression: any drop larger than this many points")
    cluster_args(parser)
    args = parser.parse_args(argv)

    from omk_ray.farm.lock import LockError, check_lock

    try:
        grid = load(args.config, args)
        names = [v.name for v in grid.variants]
        chosen = args.variant or names
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise Refused(f"{args.config}: no variants {unknown} (variants: {', '.join(names)})")
        try:
            lock = check_lock(grid, args.lock, variants=chosen)
        except LockError as err:
            raise Refused(str(err)) from None
        print(f"{args.config} matches its lock {lock}", flush=True)
        connect_and_place(grid, args, chosen)
    except Refused as err:
        return refused(err)

    from omk_ray.run_and_compare import run_and_compare

    tonight = args.root / args.date
    baseline = args.baseline or chosen[0]
    outcome = run_and_compare(grid, tonight, baseline, variants=chosen, after_run=print_run, address=args.address,
                              show_progress=True)
    summary, failed = outcome.summary, outcome.canary_failed
    passing = [n for n in chosen if n not in failed]

    record: dict = {"date": args.date, "config": str(args.config), "variants": chosen, "baseline": baseline,
                    "canary_failed": failed, "run": summary.run_id, "status": summary.status,
                    "failed_samples": summary.failed}
    if outcome.report is not None:
        record["report"] = str(outcome.report["markdown"])
        print(f"report vs {baseline}: {outcome.report['markdown']}", flush=True)
    previous = previous_night(args.root, args.date)
    record["previous"] = previous.name if previous else None
    record["regressions"] = night_over_night(previous, tonight, passing, args) if previous else []
    (tonight / "rerun.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    for line in record["regressions"]:
        print(f"REGRESSION {line}", file=sys.stderr)
    for name, reasons in failed.items():
        print(f"CANARY FAILED {name}: {'; '.join(reasons)}", file=sys.stderr)
    if failed:
        return ExitCode.CANARY_FAILED
    if record["regressions"]:
        return ExitCode.REGRESSION
    return ExitCode.FAILED if summary.failed else ExitCode.OK


def previous_night(root: Path, date: str) -> Path | None:
    """The latest earlier folder under ROOT that holds samples."""
    earlier = sorted(p for p in root.iterdir() if p.is_dir() and p.name < date and ResultsStore(p).shard_paths())
    return earlier[-1] if earlier else None


def night_over_night(previous: Path, tonight: Path, variants: list[str], args: argparse.Namespace) -> list[str]:
    """Compare each variant with itself last night; the regressions found, one line each.

    Both nights' samples go into one temporary store, last night's renamed `<variant>@<date>`,
    so the ordinary comparison (cohort guard, paired statistics) applies unchanged.
    """
    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.report import write_report

    then = ResultsStore(previous)
    prior = set(pc.unique(then.read(columns=["variant"])["variant"]).to_pylist())
    common = [v for v in variants if v in prior]
    regressions = []
    with tempfile.TemporaryDirectory(prefix="omk-ray-nights-") as tmp:
        both = ResultsStore(tmp)
        for store, suffix in ((ResultsStore(tonight), ""), (then, f"@{previous.name}")):
            rows = store.read(filter=pc.field("variant").isin(common))
            if suffix:  # a sample is keyed by its fingerprint, so last night's gets a distinct one too
                for column in ("variant", "variant_fingerprint"):
                    renamed = pc.binary_join_element_wise(rows[column], pa.scalar(suffix), "")
                    rows = rows.set_column(rows.schema.get_field_index(column), column, renamed)
            for (variant, bench), part in _groups(rows):
                both.write_shard(part, variant, bench, f"night{suffix or '@' + tonight.name}")
        for run in ResultsStore(tonight).runs():  # declared primary metrics and markers come from the manifests
            shutil.copytree(run.folder, both.runs_dir / run.run_id)
        for variant in common:
            before = f"{variant}@{previous.name}"
            comparison = compare(tmp, CompareOptions(baseline=before, variants=[variant]))
            write_report(comparison, tonight / f"vs-{previous.name}" / variant, html=False)
            for row in comparison.rows("scoreboard"):
                delta, p = row["delta_pp"], row["p_holm"]
                big = args.max_drop_pp is not None and delta < -args.max_drop_pp
                if delta < 0 and (p < args.alpha or big):
                    regressions.append(f"{variant} on {row['bench']}: {row['variant_score']:.2f} tonight vs "
                                       f"{row['baseline_score']:.2f} on {previous.name} "
                                       f"({delta:+.2f} pp, p_holm={p:.3g})")
    return regressions


def _groups(rows: pa.Table):
    keys = rows.group_by(["variant", "bench"], use_threads=False).aggregate([]).to_pylist()
    for k in keys:
        part = rows.filter((pc.field("variant") == k["variant"]) & (pc.field("bench") == k["bench"]))
        yield (k["variant"], k["bench"]), part


if __name__ == "__main__":
    sys.exit(main())
