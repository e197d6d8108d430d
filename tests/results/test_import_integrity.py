"""Imports cannot rewrite another variant's bench, are all or nothing, and wait for the folder's writer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.bench_data import LOGS, small_gsm8k_log
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.samples import AnalysisError
from omk_ray.cli import app
from omk_ray.results.folder_lock import writing
from omk_ray.results.importers import LogImportError, import_lmeval
from omk_ray.results.rescore import rescore
from omk_ray.results.store import ResultsStore

STRICT = "gsm8k=exact_match,strict-match"
cli = CliRunner(env={"COLUMNS": "400"})


def mean_scores(root: Path) -> dict[str, float]:
    rows = ResultsStore(root).read(columns=["variant", "score"]).to_pylist()
    out = {}
    for v in sorted({r["variant"] for r in rows}):
        mine = [r["score"] for r in rows if r["variant"] == v]
        out[v] = round(sum(mine) / len(mine), 4)
    return out


def test_a_second_import_with_another_primary_metric_changes_nothing_of_the_first(tmp_path):
    root = tmp_path / "results"
    log = LOGS / "gsm8k_100"
    first = cli.invoke(app, ["import", "lm-eval", str(log), "--variant", "a", "--results", str(root)])
    assert first.exit_code == 0, first.output
    shard_a = next(root.glob("samples/a/gsm8k/part-*.parquet"))
    a_bytes = shard_a.read_bytes()
    second = cli.invoke(app, ["import", "lm-eval", str(log), "--variant", "b", "--results", str(root),
                              "--primary-metric", STRICT])
    assert second.exit_code == 0, second.output
    assert mean_scores(root) == {"a": 0.88, "b": 0.05}  # the log's own numbers, each under its metric

    record = json.loads((root / "benches" / "gsm8k.json").read_text())
    assert record["spec"]["options"]["primary_metric"] == "exact_match,flexible-extract"
    assert {v: e["spec"]["options"]["primary_metric"] for v, e in record["variants"].items()} == {
        "a": "exact_match,flexible-extract", "b": "exact_match,strict-match"}

    # compare does not pair scores of different metrics; one metric read from both rows does
    with pytest.raises(AnalysisError, match="gsm8k: baseline a was scored by exact_match,flexible-extract but b by "
                                            "exact_match,strict-match"):
        compare(root, CompareOptions(baseline="a", resamples=100))
    refused = cli.invoke(app, ["compare", str(root), "--baseline", "a", "--out", str(tmp_path / "r")])
    assert refused.exit_code == 2 and "--metric gsm8k=exact_match,flexible-extract" in refused.output, refused.output
    assert not (tmp_path / "r").exists()
    same = compare(root, CompareOptions(baseline="a", resamples=100, metrics={"gsm8k": "exact_match,strict-match"}))
    assert {r["variant"]: r["score"] for r in same.rows("headline")} == {"a": 5.0, "b": 5.0}

    # rescoring scores each variant under its own import's metric: a's scores are not rewritten
    reports = {r.variant: r for r in rescore(root, bench="gsm8k", dry_run=True)}
    assert set(reports) == {"a", "b"}
    done = cli.invoke(app, ["rescore", str(root), "--bench", "gsm8k", "--variant", "b"])
    assert done.exit_code == 0, done.output
    assert shard_a.read_bytes() == a_bytes  # --variant b: a's shard not touched
    done = cli.invoke(app, ["rescore", str(root), "--bench", "gsm8k"])
    assert done.exit_code == 0, done.output
    rows = ResultsStore(root).read(columns=["variant", "score", "metrics"]).to_pylist()
    for r in rows:
        metric = "exact_match,flexible-extract" if r["variant"] == "a" else "exact_match,strict-match"
        assert r["score"] == dict(r["metrics"])[metric]
    after = mean_scores(root)
    assert after["a"] > 0.8 and after["b"] < 0.1, after


def test_a_folder_with_a_broken_task_imports_nothing(tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(LOGS / "gsm8k_100", logs / "gsm8k")
    shutil.copytree(LOGS / "ifeval_100", logs / "ifeval")
    samples = next((logs / "ifeval").glob("samples_*.jsonl"))
    lines = samples.read_text().splitlines()
    broken = json.loads(lines[3])
    del broken["doc"]
    samples.write_text("\n".join([*lines[:3], json.dumps(broken), *lines[4:]]) + "\n")
    root = tmp_path / "results"
    done = cli.invoke(app, ["import", "lm-eval", str(logs), "--variant", "a", "--results", str(root)])
    assert done.exit_code == 2 and f"{samples}: a sample of doc {broken['doc_id']} has no 'doc'" in done.output
    assert not (root / "samples").exists() and not (root / "benches").exists()
    assert ResultsStore(root).read().num_rows == 0


def test_a_sample_logged_twice_is_refused_before_anything_is_written(tmp_path):
    log = small_gsm8k_log(tmp_path / "log", docs=6)
    samples = next(log.glob("samples_*.jsonl"))
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join([*lines, lines[2]]) + "\n")
    twice = json.loads(lines[2])
    root = tmp_path / "results"
    done = cli.invoke(app, ["import", "lm-eval", str(log), "--variant", "a", "--results", str(root)])
    assert done.exit_code == 2, done.output
    assert f"doc {twice['doc_id']} is logged twice for filter '{twice['filter']}'" in done.output
    assert "reproduced" not in done.output and not (root / "samples").exists()


def test_a_doc_recorded_with_other_content_is_refused(tmp_path):
    log = small_gsm8k_log(tmp_path / "log", docs=4)
    root = tmp_path / "results"
    import_lmeval(log, "a", root)
    samples = next(log.glob("samples_*.jsonl"))
    edited = [json.loads(x) for x in samples.read_text().splitlines()]
    for s in edited:
        s["doc"]["question"] = "another question " + s["doc"]["question"]
    samples.write_text("".join(json.dumps(s) + "\n" for s in edited))
    with pytest.raises(LogImportError, match="4 docs of bench 'gsm8k' .* differ from the docs already recorded"):
        import_lmeval(log, "b", root)
    assert not (root / "samples" / "b").exists()


def test_import_rescore_and_quarantine_are_refused_while_a_run_writes_the_folder(tmp_path):
    log = small_gsm8k_log(tmp_path / "log", docs=4)
    root = tmp_path / "results"
    import_lmeval(log, "a", root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".writer")}
    bad = root / "samples" / "a" / "gsm8k" / "part-bad-00000000.parquet"
    bad.write_bytes(b"not parquet")
    with writing(root, "20260101T000000Z-holder"):
        for args in (["import", "lm-eval", str(log), "--variant", "b", "--results", str(root)],
                     ["rescore", str(root)], ["doctor", str(root), "--quarantine"]):
            done = cli.invoke(app, args)
            assert done.exit_code == 2, (args, done.output)
            assert "run 20260101T000000Z-holder (host" in done.output and "--wait" in done.output, done.output
    assert bad.exists() and not (root / "samples" / "b").exists()
    assert {p: p.read_bytes() for p in before} == before

    # --wait: the command waits for the writer, then runs
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom omk_ray.results.folder_lock import writing\n"
         f"with writing({str(root)!r}, 'holder-2'):\n    print('held', flush=True)\n    time.sleep(4)\n"
         f"    open({str(tmp_path / 'released')!r}, 'w').close()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = cli.invoke(app, ["import", "lm-eval", str(log), "--variant", "b", "--results", str(root), "--wait"])
        assert done.exit_code == 0, done.output
        assert (tmp_path / "released").exists()  # written just before the holder let go: the import waited
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert len(list(root.glob("samples/b/gsm8k/part-*.parquet"))) == 1


def _samples(log: Path) -> tuple[Path, list[dict]]:
    path = next(log.glob("samples_*.jsonl"))
    return path, [json.loads(x) for x in path.read_text().splitlines()]


def _edit_samples(log: Path, edit) -> Path:
    path, lines = _samples(log)
    edit(lines)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _edit_results(log: Path, edit) -> Path:
    path = next(log.glob("results_*.json"))
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))
    return path


def _set(mapping: dict, key: str, value) -> dict:
    mapping[key] = value
    return mapping


MALFORMED = {
    "empty samples": (lambda log: (next(log.glob("samples_*.jsonl")).write_text(""), "samples")[1],
                      "no samples (the file is empty)"),
    "mixed id types": (lambda log: (_edit_samples(log, lambda ls: _set(ls[1], "doc_id", "one")), "samples")[1],
                       "doc_id 'one' is a str"),
    "metric yes": (lambda log: (_edit_samples(log, lambda ls: _set(ls[0], "exact_match", "yes")), "samples")[1],
                   "metric 'exact_match' is 'yes', not a number"),
    "metric null": (lambda log: (_edit_samples(log, lambda ls: _set(ls[0], "exact_match", None)), "samples")[1],
                    "metric 'exact_match' is None, not a number"),
    "aggregate yes": (lambda log: (_edit_results(log, lambda d: _set(d["results"]["gsm8k"],
                                                                      "exact_match,strict-match", "yes") and d),
                                   "results")[1], "results.gsm8k.exact_match,strict-match is 'yes', not a number"),
    "aggregate null": (lambda log: (_edit_results(log, lambda d: _set(d["results"]["gsm8k"],
                                                                       "exact_match,strict-match", None) and d),
                                    "results")[1], "results.gsm8k.exact_match,strict-match is None, not a number"),
    "results a list": (lambda log: (_edit_results(log, lambda d: _set(d, "results", [d["results"]])), "results")[1],
                       "`results` must be an object, not a list"),
    "file a list": (lambda log: (_edit_results(log, lambda d: [d]), "results")[1],
                    "not an lm-eval results file (a JSON list, not an object)"),
    "not utf-8": (lambda log: (next(log.glob("samples_*.jsonl")).write_bytes(b"\xff\xfe{}\n"), "samples")[1],
                  "not UTF-8 text"),
    "sample an array": (lambda log: (next(log.glob("samples_*.jsonl")).write_text("[1, 2]\n"), "samples")[1],
                        ":1: a sample must be a JSON object, not list"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_log_is_refused_naming_the_file_and_nothing_is_written(tmp_path, case):
    log = small_gsm8k_log(tmp_path / "log", docs=4)
    break_it, problem = MALFORMED[case]
    which = break_it(log)
    named = next(log.glob("samples_*.jsonl" if which == "samples" else "results_*.json"))
    root = tmp_path / "results"
    done = cli.invoke(app, ["import", "lm-eval", str(log), "--variant", "a", "--results", str(root)])
    assert done.exit_code == 2, done.output
    assert f"{named}" in done.output.replace("\n", "") and problem in done.output.replace("\n", ""), done.output
    assert "Traceback" not in done.output and not (root / "samples").exists() and not (root / "benches").exists()


def _lcb_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "lcb"
    shutil.copytree(LOGS / "lcb_medium_55", folder)
    return folder


def _first_lcb_sample(folder: Path, **changes) -> None:
    path = folder / "lcb_result.samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps({**json.loads(lines[0]), **changes}), *lines[1:]]) + "\n")


LCB_MALFORMED = {
    "passed yes": (lambda f: _first_lcb_sample(f, passed="yes"), "lcb_result.samples.jsonl",
                   "problem lcb/leetcode/3579: passed is 'yes', not true/false"),
    "task id a list": (lambda f: _first_lcb_sample(f, task_id=[1]), "lcb_result.samples.jsonl",
                       "task_id [1] is not a name"),
    "empty samples": (lambda f: (f / "lcb_result.samples.jsonl").write_text(""), "lcb_result.samples.jsonl",
                      "no samples (the file is empty)"),
    "summary a list": (lambda f: (f / "lcb_result.json").write_text("[]"), "lcb_result.json",
                       "not an LCB summary (a JSON list, not an object)"),
    "summary empty": (lambda f: (f / "lcb_result.json").write_text(""), "lcb_result.json", "not JSON"),
    "pass_at_1 null": (lambda f: (f / "lcb_result.json").write_text('{"pass_at_1": null}'), "lcb_result.json",
                       "pass_at_1 is None, not a number"),
}


@pytest.mark.parametrize("case", LCB_MALFORMED)
def test_a_malformed_lcb_log_is_refused_naming_the_file_and_nothing_is_written(tmp_path, case):
    folder = _lcb_copy(tmp_path)
    break_it, name, problem = LCB_MALFORMED[case]
    break_it(folder)
    root = tmp_path / "results"
    done = cli.invoke(app, ["import", "lcb", str(folder / "lcb_result.samples.jsonl"), "--variant", "a",
                            "--results", str(root)])
    out = done.output.replace("\n", "")
    assert done.exit_code == 2 and f"{folder / name}: " in out and problem in out, done.output
    assert "Traceback" not in done.output and not (root / "samples").exists()


def test_a_disk_that_fills_on_the_second_log_leaves_no_shard_in_place(tmp_path, monkeypatch):
    """Two logs, the disk full when the second shard is written (an ENOSPC from the Parquet writer,
    as a full disk raises it: tests/farm/test_disk_full.py shows the real one): neither is imported."""
    import errno

    import pyarrow.parquet as pq

    logs = tmp_path / "logs"
    shutil.copytree(LOGS / "gsm8k_100", logs / "gsm8k")
    shutil.copytree(LOGS / "ifeval_100", logs / "ifeval")
    written, real = [], pq.write_table

    def fills_up(table, where, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        written.append(where)
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", fills_up)
    root = tmp_path / "results"
    done = cli.invoke(app, ["import", "lm-eval", str(logs), "--variant", "a", "--results", str(root)])
    assert done.exit_code == 2, done.output
    assert "No space left on device" in done.output
    assert len(written) == 1 and not Path(written[0]).exists()  # the first log's shard, written aside, removed
    assert sorted(p.name for p in (root / "samples").rglob("*") if p.is_file()) == []
    assert ResultsStore(root).read().num_rows == 0
    monkeypatch.setattr(pq, "write_table", real)  # room again: the same import goes through whole
    again = cli.invoke(app, ["import", "lm-eval", str(logs), "--variant", "a", "--results", str(root)])
    assert again.exit_code == 0, again.output
    assert sorted(pc_count(root).items()) == [("gsm8k", 100), ("ifeval", 100)]


def pc_count(root: Path) -> dict[str, int]:
    rows = ResultsStore(root).read(columns=["bench"]).to_pylist()
    return {b: sum(r["bench"] == b for r in rows) for b in {r["bench"] for r in rows}}
