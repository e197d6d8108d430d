"""Engine identity through the farm on a real local Ray: the same variant run by two engine
identities in one folder is stored as two cohorts, resume never reuses across them, `compare`
refuses to pair them and names both, and an engine that loads as another identity is refused."""

from __future__ import annotations

import socket
from collections import Counter
from importlib import metadata

import pytest

from helpers import hf_variant, write_bench, write_grid
from omk_ray.analysis.cohort import CohortMismatch
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.config import load_grid
from omk_ray.farm.planner import make_plan
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore

pytestmark = pytest.mark.slow  # engines start in Ray actors


def test_two_dtypes_of_one_variant_are_two_cohorts(tmp_path, tiny_gemma4, local_ray):
    bench = write_bench(tmp_path / "b.jsonl", 3)
    results = tmp_path / "results"

    def grid(dtype: str):
        return load_grid(write_grid(tmp_path / "grid.yaml", [hf_variant("base", tiny_gemma4),
                                                             hf_variant("v", tiny_gemma4, dtype=dtype)],
                                    [{"name": "copy", "kind": "jsonl", "source": str(bench)}]))

    first = run_grid(grid("float32"), results, show_progress=False)
    assert first.status == "finished" and first.generated == 6
    compare(results, CompareOptions(baseline="base", resamples=100))  # one engine cohort: paired

    bf16 = grid("bfloat16")
    plan = make_plan(bf16, ResultsStore(results))
    assert {w.variant: len(w.samples) for w in plan.work} == {"base": 0, "v": 3}  # nothing reused across dtypes
    second = run_grid(bf16, results, show_progress=False)
    assert second.status == "finished" and (second.planned, second.generated) == (3, 3)

    rows = ResultsStore(results).read().to_pylist()
    assert len(rows) == 9  # the float32 samples of v are kept beside the bfloat16 ones
    v_rows = [r for r in rows if r["variant"] == "v"]
    assert Counter(r["engine_dtype"] for r in v_rows) == {"float32": 3, "bfloat16": 3}
    assert len({r["variant_fingerprint"] for r in v_rows}) == 2
    version = metadata.version("transformers")
    for r in rows:
        assert (r["engine"], r["engine_family"], r["engine_package"]) == ("transformers",) * 3
        assert r["engine_version"] == f"transformers {version}"
        assert (r["device"], r["device_count"], r["engine_quantization"], r["engine_kernel"]) == ("cpu", 1, None, None)

    with pytest.raises(CohortMismatch) as refused:
        compare(results, CompareOptions(baseline="base", resamples=100))
    text = str(refused.value)
    assert f"engine transformers {version} float32 on cpu" in text
    assert f"engine transformers {version} bfloat16 on cpu" in text
    assert "v on copy mixes samples of different setups" in text and "--allow-mismatch" in text
    allowed = compare(results, CompareOptions(baseline="base", resamples=100, allow_mismatch=True))
    assert {(r["variant"], r["marks"]) for r in allowed.rows("scoreboard")} == {("v", "‡")}

    # back to float32: its samples are still there, none is generated again
    again = run_grid(grid("float32"), results, show_progress=False)
    assert (again.planned, again.generated) == (0, 0)


def test_an_engine_that_loads_as_another_identity_is_refused(tmp_path, local_ray):
    bench = write_bench(tmp_path / "b.jsonl", 2)
    grid = load_grid(write_grid(tmp_path / "grid.yaml", [{"name": "e", "engine": "echo", "model": "m"}],
                                [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
                                farm={"max_retries": 0}))
    plan = make_plan(grid, ResultsStore(tmp_path / "results"))
    assert plan.identities["e"].version is None  # echo has no package: its version is known once loaded
    plan.identities["e"] = plan.identities["e"].model_copy(update={"version": "1"})  # as if planned elsewhere
    summary = run_grid(grid, tmp_path / "results", show_progress=False, plan=plan)
    assert summary.generated == 0 and summary.failed == 2
    events = ResultsStore(tmp_path / "results").runs()[-1].events()
    failed = [e for e in events if e["event"] == "engine_start_failed"]
    assert len(failed) == 1
    assert f"engine loaded as echo 2 on host {socket.gethostname()}, but the plan keyed its samples as echo 1: " \
        "version '2' (planned '1')" in failed[0]["error"]
