"""A loglikelihood bench through the farm: a killed run resumes its documents exactly once, and the
rows hold the choices' log-likelihoods, the choice picked and lm-eval's metrics (the twin of
test_farm.py's generation test `test_driver_killed_mid_run_then_resumed`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import hf_variant, stored_keys, write_grid
from omk_ray.results.store import ResultsStore

TOY = os.path.join(os.path.dirname(__file__), "..", "..", "omk_ray", "_data", "toy", "model")
DOCS = 120


def mc_rows(n: int) -> list[dict]:
    """toy_mc's kind of question (the shipped task's YAML, this data as the bench's source)."""
    rows = []
    for i in range(n):
        a, b = 10 + i % 80, 1 + i % 9
        choices = [str(a + b), str(a + b + 1), str(a + b - 1), str(a + b + 10)]
        k = i % 4
        choices[0], choices[k] = choices[k], choices[0]
        rows.append({"id": f"m{i}", "prompt": f"add {a} {b}", "choices": choices, "label": k, "subject": "add"})
    return rows


@pytest.mark.slow
def test_a_killed_multiple_choice_run_resumes_each_document_once(tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in mc_rows(DOCS)))
    config = write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("toy", TOY, batch_size=2)],
        [{"name": "mc", "kind": "lmeval", "source": str(data),
          "options": {"task": "toy_mc", "id_field": "id", "domain_field": "subject"}}],
        farm={"flush_samples": 4, "max_in_flight": 4, "max_engines": 1},
    )
    results = tmp_path / "results"
    cli = [sys.executable, "-m", "omk_ray", "run", str(config), "--results", str(results), "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    store = ResultsStore(results)
    deadline = time.monotonic() + 300
    while len(store.shard_paths()) < 3:
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = stored_keys(results)
    assert 0 < len(before) < DOCS and len(before) == len(set(before))
    first = {r["doc_id"]: r["choice_logprobs"] for r in store.read().to_pylist()}

    rerun = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    manifest = store.runs()[-1].manifest()
    assert manifest["planned_samples"] == manifest["generated_samples"] == DOCS - len(before)
    after = stored_keys(results)
    assert len(after) == len(set(after)) == DOCS and set(before) <= set(after)

    rows = store.read().to_pylist()
    for row in rows:
        lls = row["choice_logprobs"]
        assert row["error"] is None and len(lls) == 4 and len(row["choice_greedy"]) == 4
        assert row["chosen"] == lls.index(max(lls))
        metrics = dict(row["metrics"])
        assert row["score"] == metrics["acc,none"] and set(metrics) == {"acc,none", "acc_norm,none"}
        assert row["extracted_answer"] == next(r for r in mc_rows(DOCS) if r["id"] == row["doc_id"])["choices"][row["chosen"]]
        assert row["domain"] == "add"
        if row["doc_id"] in first:  # stored before the kill: kept as it was
            assert lls == first[row["doc_id"]]
    assert sum(r["correct"] for r in rows) > DOCS / 2  # the toy adds: far above the 1/4 of chance
