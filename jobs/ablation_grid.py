"""Ray Job: one ablation grid end to end.

Builds the arms the config declares (variants with a `build:` block, reused by fingerprint),
runs every variant with its canary first (the config's `farm.canary`: a few problems per
bench, structural checks; an arm that fails is not run further), compares the arms with the
baseline and writes the report (report.md, report.html, tables/, summary.json).

    ray job submit --address http://localhost:8265 --working-dir . -- \\
        python jobs/ablation_grid.py configs/ablation_v4.yaml --results /home/ray/results/v4 --baseline 128e

Rerunning the same command resumes: finished samples are kept. Exit code 0 when every arm
passed its canary and ran completely, 1 when samples failed, 2 when the grid was refused,
3 when a variant failed its canary (it is left out of the report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobkit import CANARY_FAILED, FAILED_SAMPLES, OK, REFUSED, Refused, canary_failures, cluster_args, \
    connect_and_place, load  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="grid config (YAML)")
    parser.add_argument("--results", type=Path, required=True, help="results folder (created; reruns resume it)")
    parser.add_argument("--baseline", required=True, help="the variant every arm is compared with")
    parser.add_argument("--report", type=Path, help="report folder (default: RESULTS/report)")
    parser.add_argument("--variant", action="append", help="only these variants (repeatable; the baseline is added)")
    parser.add_argument("--limit", type=int, help="first N problems of every bench (smoke runs)")
    cluster_args(parser)
    args = parser.parse_args(argv)

    try:
        grid = load(args.config, args)
        names = [v.name for v in grid.variants]
        if args.baseline not in names:
            raise Refused(f"{args.config}: no variant {args.baseline!r} to use as baseline "
                          f"(variants: {', '.join(names)})")
        chosen = [n for n in names if not args.variant or n in args.variant or n == args.baseline]
        connect_and_place(grid, args, chosen)
    except Refused as err:
        print(f"refused: {err}", file=sys.stderr)
        return REFUSED

    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.report import write_report
    from omk_ray.farm.runner import run_grid

    summary = run_grid(grid, args.results, address=args.address, variants=chosen, limit_docs=args.limit,
                       show_progress=False)
    print(f"run {summary.run_id}: {summary.status}; {summary.generated} samples generated, {summary.failed} failed, "
          f"{summary.skipped} skipped, {summary.seconds:.0f} s", flush=True)
    failed = canary_failures(args.results, summary.run_id)
    if args.baseline in failed:
        print(f"the baseline {args.baseline} failed its canary: nothing to compare with", file=sys.stderr)
        return CANARY_FAILED

    arms = [n for n in chosen if n != args.baseline and n not in failed]
    if arms:
        comparison = compare(args.results, CompareOptions(baseline=args.baseline, variants=arms))
        paths = write_report(comparison, args.report or args.results / "report")
        for row in comparison.rows("scoreboard"):
            print(f"{row['bench']:>16} {row['variant']:>16}: {row['variant_score']:.2f} vs {row['baseline_score']:.2f} "
                  f"({row['delta_pp']:+.2f} pp, p_holm={row['p_holm']:.3g})")
        print(f"report: {paths['markdown']}", flush=True)
    for name, reasons in failed.items():
        print(f"arm {name} left out: canary failed: {'; '.join(reasons)}", file=sys.stderr)
    if failed:
        return CANARY_FAILED
    return FAILED_SAMPLES if summary.failed else OK


if __name__ == "__main__":
    sys.exit(main())
