"""`omk-ray demo`: the whole path on this machine, from a trained toy MoE to a model-card report.

The grid is `configs/demo.yaml` (a link to `omk_ray/_data/toy/demo.yaml`): the toy Gemma 4
MoE shipped in `omk_ray/_data/toy/` as the baseline (on vLLM, and on transformers to show
both engines agree), and pruned arms that the run builds itself: the toy model is profiled
per class, drop maps are made by `max`, `mean` and `geomean` over classes and by `max` with
the arithmetic class split into its subclasses, and the experts are cut out by the
streaming surgery. Every arm is canaried, then evaluated on a local Ray cluster with vLLM,
the baseline's samples are teacher-forced to record which experts each problem used
(`omk-ray route`), and the demo ends with the comparison against the baseline: the model
card's evaluation section printed here (card.md), the full report with paired statistics,
each arm's dropped-expert exposure and plots on disk. Rerunning resumes from what OUT already
holds.

`--grid gguf` runs `configs/demo_gguf.yaml` instead: the toy and its `max` arm on vLLM next to
their GGUF twins on llama.cpp (F16, and Q8_0 with an importance matrix), and ends with the
serving cohorts side by side and each twin's agreement with its vLLM twin.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from omk_ray.config import load_grid
from omk_ray.console import output_console

console = output_console()
DEMO_CONFIG = Path(__file__).parent / "_data" / "toy" / "demo.yaml"
GGUF_CONFIG = DEMO_CONFIG.with_name("demo_gguf.yaml")
BASELINE = "toy"
GGUF_COHORTS = [("vLLM float32", ["toy", "max"]), ("llama.cpp F16", ["toy-f16", "max-f16"]),
                ("llama.cpp Q8_0 imatrix", ["toy-q8", "max-q8"])]


def untrained_stand_in(out: Path, config: Path = DEMO_CONFIG) -> Path:
    """The demo grid on an untrained model of the toy's shape (when no trained toy is shipped)."""
    from omk_ray.toy.data import write_data
    from omk_ray.toy.tiny import build_tiny_gemma4

    folder = out / "untrained-toy"
    if not (folder / "model" / "config.json").exists():
        build_tiny_gemma4(folder / "model", seed=0, num_experts=16, top_k=2, layers=3)
    write_data(folder)
    shutil.copy(config, folder / config.name)
    return folder / config.name


def run_demo(out: Path, fresh: bool = False, config: Path = DEMO_CONFIG, cohorts=None) -> None:
    from omk_ray.analysis.card import to_card
    from omk_ray.run_and_compare import run_and_compare
    from omk_ray.variants.routing import route_variant

    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    trained = (config.resolve().parent / "model" / "config.json").exists()
    if not trained:
        console.print("[yellow]no trained toy model is shipped here: running the grid on an untrained model of "
                      "its shape (every score 0; canary verdicts recorded, not enforced)[/]")
        config = untrained_stand_in(out, config)
    grid = load_grid(config)
    grid = grid.model_copy(update={"artifacts": str((out / "artifacts").resolve())})
    if not trained:
        canary = grid.farm.canary.model_copy(update={"on_fail": "continue"})
        grid = grid.model_copy(update={"farm": grid.farm.model_copy(update={"canary": canary})})
    console.print(f"[bold]grid[/] {config}: {len(grid.variants)} variants x {len(grid.benches)} benches; "
                  f"arms are built under {out / 'artifacts'}; local Ray")

    def then_route(summary) -> None:
        console.print(f"run {summary.run_id}: {summary.status}, {summary.generated} samples generated "
                      f"({summary.expected - summary.planned} already stored) in {summary.seconds:.0f} s")
        routed = route_variant(out / "results", BASELINE)
        console.print(f"routing of {BASELINE}: {routed.routed} samples teacher-forced ({routed.already} already "
                      "routed)")

    outcome = run_and_compare(grid, out / "results", BASELINE, out / "report", after_run=then_route,
                              leave_out_failed=False)
    paths = outcome.report
    console.print(to_card(outcome.comparison), markup=False, highlight=False, soft_wrap=True)
    if cohorts:
        from omk_ray.analysis.markdown import render
        from omk_ray.analysis.serving import ServingCohort, side_by_side

        side = side_by_side(out / "results", [ServingCohort(name, variants) for name, variants in cohorts])
        console.print(render(side.sections()), markup=False, highlight=False, soft_wrap=True)
    console.print(f"\nresults: {out / 'results'} (Parquet under samples/<variant>/<bench>/)")
    console.print(f"report:  {paths['card']} (the card above), {paths['html']} (HTML), {paths['markdown']} (every "
                  f"table, paired statistics), tables in {out / 'report' / 'tables'}")
