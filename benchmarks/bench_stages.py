"""Staged evaluation against full evaluation (issue 23): simulated engine time of two grids, and the
false-stop rate beside it. Prints its figures; run with `.venv/bin/python benchmarks/bench_stages.py`.

No engine runs: each grid is drawn many times by omk_ray/farm/stage_sim.py (problems shared by every
variant, each variant's true paired difference to the baseline as below) and judged by
omk_ray/farm/stages.py with its defaults (stages canary, 25%, 50%, 100%; stop below -5 pp; alpha
0.05 over the grid; the canary's exact test at a 20 pp margin on 24 problems). Engine time is
samples x tokens per sample / tokens per second per GPU, the baseline always run in full.

- demo: the demo grid's shape (configs/demo.yaml): the toy bench (400 problems, baseline 90.5%) and
  its seven arms at their measured differences (README's card: 0, -0.5, -21.5, -21.5, -26.75, -59,
  -3.5 pp), ~5 generated tokens a sample.
- card: twenty arms on the canonical suite (configs/canonical.yaml: ten benches, 30 to 1172 problems,
  each weighted equally as the card shows them), tokens per sample as greedy runs of a 26B-A4B model
  spend them, most arms bad: 4 at 0, 3 at -2, 3 at -5 (the threshold), 3 at -10, 3 at -20, 2 at -30,
  2 at -70 pp.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from omk_ray.farm.stage_sim import simulate

TOKENS_PER_S = 2500.0  # one GPU's generation throughput, batched (an assumption; only the ratio matters)

DEMO = {
    "arms": {"toy-hf": 0.0, "toy-nvfp4": -0.5, "max": -21.5, "max-nvfp4": -21.5, "mean": -26.75, "geomean": -59.0,
             "max-split": -3.5},
    "benches": {"toy": (400, 0.905, 5)},  # problems, baseline accuracy, tokens per sample
}
CARD = {
    "arms": {**{f"eq{i}": 0.0 for i in range(4)}, **{f"m2-{i}": -2.0 for i in range(3)},
             **{f"m5-{i}": -5.0 for i in range(3)}, **{f"m10-{i}": -10.0 for i in range(3)},
             **{f"m20-{i}": -20.0 for i in range(3)}, **{f"m30-{i}": -30.0 for i in range(2)},
             **{f"m70-{i}": -70.0 for i in range(2)}},
    "benches": {"arc_challenge": (1172, 0.95, 300), "gpqa_diamond": (198, 0.55, 3000), "gsm8k": (100, 0.92, 350),
                "math500": (100, 0.75, 1200), "aime24": (30, 0.30, 10000), "ifeval": (100, 0.85, 500),
                "humaneval": (164, 0.90, 350), "humaneval_plus": (164, 0.85, 350), "lcb_medium": (55, 0.45, 8000),
                "mbpp": (500, 0.75, 300)},
}


def gpu_hours(sim, benches: dict, arms: list[str]) -> tuple[float, float]:
    """(staged, full) engine hours of the grid, averaged over the simulated grids (baseline included)."""
    from omk_ray.farm.stages import CANARY_DOCS, STAGES, looks

    sizes = {b: n for b, (n, _, _) in benches.items()}
    plan = looks(STAGES, sizes, CANARY_DOCS)
    cost = {b: tok / TOKENS_PER_S / 3600 for b, (_, _, tok) in benches.items()}
    full_one = sum(sizes[b] * cost[b] for b in sizes)
    staged = full_one  # the baseline
    for arm in arms:
        stops = sim.stage[arm]
        per_look = [sum(look.counts[b] * cost[b] for b in sizes) for look in plan]
        staged += float(np.mean([per_look[s] if s >= 0 else full_one for s in stops]))
    return staged, full_one * (len(arms) + 1)


def report(name: str, grid: dict, grids: int, seed: int) -> None:
    t0 = time.monotonic()
    benches = {b: (n, acc) for b, (n, acc, _) in grid["benches"].items()}
    sim = simulate(grid["arms"], benches, grids=grids, seed=seed)
    staged, full = gpu_hours(sim, grid["benches"], list(grid["arms"]))
    within = [a for a, d in grid["arms"].items() if d >= -5.0]
    false_any = np.mean(np.any([sim.stage[a] >= 0 for a in within], axis=0))
    false_arm = np.mean([np.mean(sim.stage[a] >= 0) for a in within])
    print(f"== {name}: {len(grid['arms'])} arms x {len(benches)} benches, {grids} simulated grids "
          f"({time.monotonic() - t0:.1f} s)")
    print(f"   GPU hours: staged {staged:.3g} vs full {full:.3g}: {1 - staged / full:.1%} saved "
          f"(samples: {sim.saved():.1%})")
    print(f"   false stops (arms within 5 pp of the baseline): {false_any:.4f} of grids, {false_arm:.4f} per arm "
          f"(nominal <= 0.05 per grid)")
    for delta in sorted(set(grid["arms"].values()), reverse=True):
        arms = [a for a, d in grid["arms"].items() if d == delta]
        where: dict[str, float] = {}
        for a in arms:
            for k, v in sim.stages(a).items():
                where[k] = where.get(k, 0.0) + v / len(arms)
        print(f"   {delta:+7.2f} pp: " + ", ".join(f"{k} {v:.1%}" for k, v in where.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=300, help="simulated draws of each grid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report("demo grid", DEMO, args.grids, args.seed)
    report("card suite, 20 arms", CARD, max(args.grids // 3, 50), args.seed)


if __name__ == "__main__":
    main()
