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

from jobkit import Refused, cluster_args, connect_and_place, load, print_run, refused

from omk_ray.exits import ExitCode


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
        return refused(err)

    from omk_ray.run_and_compare import run_and_compare

    outcome = run_and_compare(grid, args.results, args.baseline, args.report, variants=chosen, after_run=print_run,
                              address=args.address, limit_docs=args.limit, show_progress=True)
    failed = outcome.canary_failed
    if args.baseline in failed:
        print(f"the baseline {args.baseline} failed its canary: nothing to compare with", file=sys.stderr)
        return ExitCode.CANARY_FAILED

    if outcome.comparison is not None:
        for row in outcome.comparison.rows("scoreboard"):
            print(f"{row['bench']:>16} {row['variant']:>16}: {row['variant_score']:.2f} vs {row['baseline_score']:.2f} "
                  f"({row['delta_pp']:+.2f} pp, p_holm={row['p_holm']:.3g})")
        print(f"report: {outcome.report['markdown']}", flush=True)
    for name, reasons in failed.items():
        print(f"arm {name} left out: canary failed: {'; '.join(reasons)}", file=sys.stderr)
    if failed:
        return ExitCode.CANARY_FAILED
    return ExitCode.FAILED if outcome.summary.failed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
