"""The Ray Jobs entrypoints: an ablation grid submitted through the Jobs API to a Ray head started
here; the overnight canonical rerun (lock refusal, two nights, a regression caught); the
agreement export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines import Request, engine_class
from omk_ray.farm.lock import write_lock
from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs"))

import canonical_rerun  # noqa: E402
import export_agreement  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- the Jobs API -----------------------------------------------------------------------------------


@pytest.fixture
def ray_head():
    """`ray start --head` in its own process group, stopped by that group only (never `ray stop`,
    which would stop every Ray on this shared machine)."""
    temp_dir = tempfile.mkdtemp(prefix="omkjob-", dir="/tmp")  # short: Ray's socket paths must fit
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         f"--dashboard-port={dashboard}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--num-cpus=2",
         "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=(Path(temp_dir) / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield _wait_for_jobs_api(head, f"http://127.0.0.1:{dashboard}", Path(temp_dir) / "head.log")
    finally:
        _stop(head, temp_dir)


def _wait_for_jobs_api(head: subprocess.Popen, address: str, log: Path):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 120
    while True:
        assert head.poll() is None, log.read_text()[-3000:]
        try:
            return JobSubmissionClient(address)
        except Exception:
            assert time.monotonic() < deadline, "the Ray head's Jobs API did not come up in 120 s"
            time.sleep(1)


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
        try:
            os.killpg(head.pid, sig)  # the head and its daemons: the process group it leads
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    head.wait()
    for pid in _pids_using(temp_dir):  # anything of this head that left its group (job drivers)
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _pids_using(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            mine = proc.name.isdigit() and int(proc.name) != os.getpid()
            if mine and marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def submit(client, **job) -> str:
    """Submit, waiting out the seconds after start-up when the head has no job agent registered yet."""
    deadline = time.monotonic() + 300  # a loaded 2-core machine registers the agent late
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def greedy_answers(model: Path, prompts: list[str], recipe: Recipe) -> list[str]:
    variant = VariantSpec(name="x", model=str(model), engine="transformers", engine_args={"dtype": "float32"})
    engine = engine_class("transformers")(variant, str(model))
    return [c.text.strip() for c in engine.generate_batch([Request(id=p, messages=[{"role": "user", "content": p}])
                                                          for p in prompts], recipe)]


@pytest.mark.slow
def test_ablation_grid_job_submitted_through_the_jobs_api(tmp_path, tiny_gemma4, ray_head):
    """Build an arm (one expert dropped per layer), canary both, evaluate, compare, report."""
    from omk_ray.variants.artifacts import ensure_variant

    recipe = {"max_gen_toks": 4, "min_tokens": 1}
    build = {"base": str(tiny_gemma4), "drop_map": {"0": [1], "1": [1]}}
    artifacts = tmp_path / "artifacts"
    pruned = ensure_variant(build, artifacts)  # the job finds it built and reuses it
    prompts = [f"copy {1000 + 7 * i}" for i in range(16)]
    base_says = greedy_answers(tiny_gemma4, prompts, Recipe(**recipe))
    arm_says = greedy_answers(pruned, prompts, Recipe(**recipe))
    # targets: what the baseline says on even problems, what the arm says on odd ones (random tiny
    # models answer nothing right otherwise, and a canary refuses a bench scored 0 everywhere)
    docs = [{"id": f"q{i}", "prompt": p, "target": (base_says if i % 2 == 0 else arm_says)[i]}
            for i, p in enumerate(prompts) if base_says[i] and arm_says[i]]
    assert len(docs) >= 12
    write_jsonl(tmp_path / "bench.jsonl", docs)
    config = tmp_path / "ablation.yaml"
    engine_args = {"dtype": "float32", "max_model_len": 128}
    config.write_text(yaml.safe_dump({
        "name": "ablation", "recipe": recipe,
        "variants": [{"name": "base", "model": str(tiny_gemma4), "engine": "transformers", "engine_args": engine_args},
                     {"name": "drop1", "build": build, "engine": "transformers", "engine_args": engine_args}],
        "benches": [{"name": "echo", "kind": "jsonl", "source": "bench.jsonl"}],
    }))
    results = tmp_path / "results"
    job = submit(
        ray_head,
        entrypoint=f"{sys.executable} {ROOT / 'jobs' / 'ablation_grid.py'} {config} --results {results} "
                   f"--baseline base --artifacts {artifacts}",
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}},
    )
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + 400
    while (status := ray_head.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, ray_head.get_job_logs(job)[-3000:]
        time.sleep(1)
    logs = ray_head.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "canary base: passed" in logs and "canary drop1: passed" in logs and "== placement" in logs
    assert "[omk-ray] build drop1: reused" in logs and "[omk-ray] run: samples" in logs  # progress in the job's log
    manifest = ResultsStore(results).runs()[-1].manifest()
    assert manifest["model_paths"]["drop1"] == str(pruned)  # the arm built before was reused
    assert set(manifest["canary"]) == {"base", "drop1"}

    rows = ResultsStore(results).read().to_pylist()
    assert {(r["variant"], r["doc_id"]) for r in rows} == {(v, d["id"]) for v in ("base", "drop1") for d in docs}
    summary = json.loads((results / "report" / "summary.json").read_text())
    board = {row["variant"]: row for row in summary["scoreboard"]}
    n_base = sum(1 for r in rows if r["variant"] == "base" and r["correct"])
    n_arm = sum(1 for r in rows if r["variant"] == "drop1" and r["correct"])
    assert n_base >= 6 and n_arm >= 6  # each is right at least on its own half
    assert board["drop1"]["variant_score"] == pytest.approx(100 * n_arm / len(docs))
    assert board["drop1"]["baseline_score"] == pytest.approx(100 * n_base / len(docs))
    assert (results / "report" / "report.md").is_file() and (results / "report" / "report.html").is_file()


# -- the overnight canonical rerun -----------------------------------------------------------------

N_DOCS = 20


def canonical_suite(tmp_path: Path, answers_right: int) -> tuple[Path, Path]:
    """A locked suite: `base` (echo engine: repeats the prompt, which is the target) and `served`,
    answers replayed from a folder that stands for a deployed endpoint whose answers may change."""
    write_jsonl(tmp_path / "say.jsonl", [{"id": f"d{i}", "prompt": f"say {i}", "target": f"say {i}"} for i in range(N_DOCS)])
    served = tmp_path / "served"
    set_served_answers(served, answers_right)
    config = tmp_path / "canonical.yaml"
    config.write_text(yaml.safe_dump({
        "name": "canonical", "recipe": {"max_gen_toks": 8},
        "variants": [{"name": "base", "model": "none", "engine": "echo"},
                     {"name": "served", "model": "served", "engine": "replay", "engine_args": {"extra": {"variant": "endpoint"}}}],
        "benches": [{"name": "say", "kind": "jsonl", "source": "say.jsonl", "revision": "v1"}],
        # the nightly comparison is what these tests follow: the canary's own comparison with the baseline
        # would stop a night 50 pp down before its full run (exit 3; tests/farm/test_scheduler.py)
        "farm": {"canary": {"max_loss_pp": None}},
    }, sort_keys=False))
    return config, served


def set_served_answers(folder: Path, right: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    rows = [{"variant": "endpoint", "bench": "say", "doc_id": f"d{i}", "repeat": 0, "response": f"say {i}" if i < right else "no idea",
             "prompt_tokens": 5, "completion_tokens": 2, "finish_reason": "stop", "engine_version": "endpoint 1"}
            for i in range(N_DOCS)]
    ResultsStore(folder).write_shard(rows_to_table(rows), "endpoint", "say", "u0")


def test_canonical_rerun_refuses_a_config_that_drifted_from_its_lock(tmp_path, capsys):
    config, _ = canonical_suite(tmp_path, answers_right=N_DOCS)
    args = [str(config), "--root", str(tmp_path / "nightly"), "--date", "2026-01-01"]
    assert canonical_rerun.main(args) == 2  # no lock yet
    assert "no lock file" in capsys.readouterr().err

    from omk_ray.config import load_grid

    write_lock(load_grid(config))
    raw = yaml.safe_load(config.read_text())
    raw["benches"][0]["recipe"] = {"max_gen_toks": 16}  # someone "just" raised the budget
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert canonical_rerun.main(args) == 2
    err = capsys.readouterr().err
    assert "no longer matches its lock" in err and "max_gen_toks 8 -> 16" in err and "--relock" in err
    assert not (tmp_path / "nightly").exists() and not ray.is_initialized()  # refused before anything ran


def test_two_nights_then_a_regression_is_caught_and_exported(tmp_path, capsys, local_ray):
    config, served = canonical_suite(tmp_path, answers_right=18)
    from omk_ray.config import load_grid

    write_lock(load_grid(config))
    root = tmp_path / "nightly"
    night = [str(config), "--root", str(root), "--baseline", "base"]

    assert canonical_rerun.main([*night, "--date", "2026-01-01"]) == 0, capsys.readouterr()
    first = json.loads((root / "2026-01-01" / "rerun.json").read_text())
    assert first["previous"] is None and first["regressions"] == [] and first["canary_failed"] == {}
    assert "canary served: passed" in capsys.readouterr().out
    assert (root / "2026-01-01" / "report" / "report.md").is_file()

    set_served_answers(served, right=8)  # the endpoint behind `served` got worse overnight; the config did not change
    assert canonical_rerun.main([*night, "--date", "2026-01-02"]) == 4
    second = json.loads((root / "2026-01-02" / "rerun.json").read_text())
    assert second["previous"] == "2026-01-01"
    assert len(second["regressions"]) == 1 and second["regressions"][0].startswith("served on say: 40.00 tonight vs 90.00")
    assert "REGRESSION served on say" in capsys.readouterr().err
    assert (root / "2026-01-02" / "vs-2026-01-01" / "served" / "report.md").is_file()
    assert (root / "2026-01-02" / "vs-2026-01-01" / "base" / "report.md").is_file()  # compared, unchanged
    rows = ResultsStore(root / "2026-01-02").read().to_pylist()
    assert len(rows) == 2 * N_DOCS and sum(r["correct"] for r in rows if r["variant"] == "served") == 8

    # per-problem agreement of that night, for analysts
    out = tmp_path / "agreement"
    assert export_agreement.main([str(root / "2026-01-02"), "--baseline", "base", "--out", str(out)]) == 0
    problems = pq.read_table(out / "problems.parquet").to_pylist()
    assert len(problems) == N_DOCS
    assert sum(p["outcome"] == "lost" for p in problems) == N_DOCS - 8
    assert sum(p["outcome"] == "both_correct" for p in problems) == 8
    wide = pv.read_csv(out / "problems_wide.csv").to_pylist()
    assert len(wide) == N_DOCS and {w["served_outcome"] for w in wide} == {"lost", "both_correct"}
    agreement = pv.read_csv(out / "agreement.csv").to_pylist()
    assert agreement[0]["lost"] == N_DOCS - 8 and agreement[0]["lost_ids"].split() == [f"d{i}" for i in range(8, N_DOCS)]
    assert export_agreement.main([str(root / "2026-01-02"), "--baseline", "nobody"]) == 2


def test_the_nightly_gate_never_calls_errors_a_regression(tmp_path):
    """Tonight the endpoint failed on 12 of 20 problems: those are errors, not 12 lost problems."""
    import argparse

    def night(folder: Path, failed: int) -> Path:
        rows = [{"variant": "served", "variant_fingerprint": "fp", "bench": "say", "doc_id": f"d{i}", "repeat": 0,
                 "cohort": "greedy", "recipe_hash": "r", "response": "" if i < failed else f"say {i}",
                 "finish_reason": "error" if i < failed else "stop", "error": "endpoint unreachable" if i < failed else None,
                 "score": 0.0 if i < failed else 1.0, "correct": i >= failed, "metrics": {} if i < failed else {"exact_match": 1.0},
                 "completion_tokens": 0 if i < failed else 2} for i in range(N_DOCS)]
        ResultsStore(folder).write_shard(rows_to_table(rows), "served", "say", "u0")
        return folder

    previous, tonight = night(tmp_path / "2026-01-01", failed=0), night(tmp_path / "2026-01-02", failed=12)
    gate = argparse.Namespace(alpha=0.05, max_drop_pp=5.0)
    assert canonical_rerun.night_over_night(previous, tonight, ["served"], gate) == []
    report = (tonight / "vs-2026-01-01" / "served" / "report.md").read_text()
    assert "12 error samples of served excluded" in report
