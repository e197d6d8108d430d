"""Typed run records: the manifest and its events go through one writer and one reader, older
manifests read, and a run's status says "died" from its records and the folder's writer."""

from __future__ import annotations

import json

import pytest

from omk_ray.results.run_records import EventKind, RunManifest
from omk_ray.results.store import ResultsStore, UnreadableResults

# A manifest as the runner wrote it before the typed records (every key it wrote, with the values
# of a small finished run), plus a key no model names.
OLD_MANIFEST = {
    "run_id": "20260101-000000-abcd", "status": "finished", "started_at": "2026-01-01T00:00:00+00:00",
    "ended_at": "2026-01-01T00:01:00+00:00", "config": {"name": "test", "variants": [], "benches": []},
    "config_path": "/g.yaml", "variants": ["base"], "fingerprints": {"base": "fp"}, "gpu": False,
    "engine_identities": {"base": {"family": "echo"}}, "weights": {"base": {"content_sha256": "ab"}},
    "model_paths": {"base": "/m"}, "recipe_hashes": {"base": {"b": "r1"}}, "dataset_revisions": {"b": None},
    "expected_samples": 4, "planned_samples": 4, "versions": {"omk-ray": "0.1", "vllm": None},
    "host": "h", "pid": 7, "address": None, "limit_docs": None, "took_over_from": None,
    "cluster_resources": {"CPU": 2.0}, "seconds": 60.0, "generated_samples": 3, "failed_samples": 1,
    "skipped_samples": 0, "canary": {"base": {"passed": False, "reasons": ["empty answers"], "benches": [{"n": 2}]}},
    "isolation": {}, "engines": [{"name": "r-e0-base", "variant": "base", "info": {"host": "h"}, "alive_s": 10.0,
                                  "busy_s": None, "samples": 4, "tokens": 40, "gpus": 1.0}],
    "gpus": [], "a_key_from_the_future": {"kept": True},
}


def test_an_old_manifest_reads_typed_with_its_unknown_keys_kept(tmp_path):
    run = ResultsStore(tmp_path).new_run("20260101-000000-abcd")
    run.folder.mkdir(parents=True)
    run.manifest_path.write_text(json.dumps(OLD_MANIFEST))  # written by hand, not through the writer
    m = run.records().manifest
    assert (m.status, m.model_paths, m.gpu, m.failed_samples) == ("finished", {"base": "/m"}, False, 1)
    assert (m.canary["base"].passed, m.canary["base"].reasons) == (False, ["empty answers"])
    assert (m.engines[0].name, m.engines[0].busy_s, m.engines[0].info) == ("r-e0-base", None, {"host": "h"})
    assert m.a_key_from_the_future == {"kept": True}


def test_a_minimal_manifest_reads_with_defaults(tmp_path):
    run = ResultsStore(tmp_path).new_run("r1")
    run.write_manifest({"run_id": "r1", "config": {"name": "x"}})
    m = run.records().manifest
    assert (m.status, m.model_paths, m.canary, m.engines, m.seconds) == ("running", {}, {}, [], None)


def test_manifest_round_trip(tmp_path):
    run = ResultsStore(tmp_path).new_run("20260101-000000-abcd")
    run.write_manifest(RunManifest.model_validate(OLD_MANIFEST))
    assert run.records().manifest == RunManifest.model_validate(OLD_MANIFEST)
    stored = json.loads(run.manifest_path.read_text())
    # every key as the older readers saw it (a canary verdict gains `stopped` and `rules` beside its old keys)
    assert {k: stored[k] for k in OLD_MANIFEST if k != "canary"} == {k: v for k, v in OLD_MANIFEST.items() if k != "canary"}
    old = OLD_MANIFEST["canary"]["base"]
    assert {k: stored["canary"]["base"][k] for k in old} == old
    assert (stored["canary"]["base"]["stopped"], stored["canary"]["base"]["rules"]) == (None, [])


def test_a_manifest_the_model_refuses_is_unreadable(tmp_path):
    store = ResultsStore(tmp_path, skip_unreadable=True)
    run = store.new_run("r1")
    run.folder.mkdir(parents=True)
    run.manifest_path.write_text(json.dumps({"run_id": "r1", "engines": "not a list"}))
    assert store.runs() == [] and "engines" in store.unreadable[0].problem
    with pytest.raises(UnreadableResults):
        run.records()


def test_events_are_typed_and_an_unknown_kind_is_refused_when_written_but_read_when_old(tmp_path):
    run = ResultsStore(tmp_path).new_run("r1")
    run.write_manifest({"run_id": "r1"})
    run.event(EventKind.ENGINE_DIED, engine="e0", variant="v", in_flight=3, error="oom")
    run.event("samples_failed", variant="v", bench="b", doc_ids=["d0#0"], reason="gave up")
    with pytest.raises(ValueError, match="engine_exploded"):
        run.event("engine_exploded", engine="e0")
    with run.events_path.open("a") as f:  # a kind an older version wrote
        f.write(json.dumps({"time": "t", "event": "unit_failed", "error": "x"}) + "\n")
        f.write(json.dumps({"time": "t", "error": "no kind"}) + "\n[1, 2]\n")  # not events: skipped
    events = run.records().events
    assert [e.event for e in events] == [EventKind.ENGINE_DIED, EventKind.SAMPLES_FAILED, "unit_failed"]
    assert isinstance(events[0].event, EventKind) and not isinstance(events[2].event, EventKind)
    assert events[0].in_flight == 3 and events[1].doc_ids == ["d0#0"]
    assert [e.event for e in run.records().failures()] == [EventKind.ENGINE_DIED]
    assert [e.reason for e in run.records().given_up()] == ["gave up"]
    assert json.loads(run.events_path.read_text().splitlines()[0]).keys() == {"time", "event", "engine", "variant",
                                                                             "in_flight", "error"}


@pytest.mark.parametrize(("recorded", "writer", "shown"), [
    ("running", None, "died"),  # nobody holds the folder: killed before it recorded its end
    ("running", "other-run", "died"),  # another run took the folder over
    ("running", "r1", "running"),  # the folder's writer is this run
    ("finished", None, "finished"),
    ("interrupted", None, "interrupted"),
])
def test_status_derives_died_from_the_records(tmp_path, recorded, writer, shown):
    run = ResultsStore(tmp_path).new_run("r1")
    run.write_manifest({"run_id": "r1", "status": recorded})
    assert run.records().status(writer) == shown


def test_events_are_scrubbed_of_secrets_before_they_are_written(tmp_path, monkeypatch):
    """An engine error echoing the API key (an env value, or one the run names) never reaches events.jsonl;
    hashes and paths outside the error texts stay as they are."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-value-0123456789")
    run = ResultsStore(tmp_path).new_run("r1")
    run.write_manifest({"run_id": "r1"})
    run.secrets = ("endpoint cred 42",)  # a grid's `api_key_env` value, whatever the variable's name
    commit = "/hub/snapshots/0123456789abcdef0123456789abcdef01234567/config.json"
    run.event(EventKind.ENGINE_START_FAILED, engine="e", variant="v",
              error="HTTP 401: key sk-env-value-0123456789 refused; got endpoint cred 42; "
                    "Authorization: Bearer abc.def")
    run.event(EventKind.SAMPLES_FAILED, variant="v", bench="b", doc_ids=["d#0"],
              reason="failed 2 times: echo endpoint cred 42")
    run.event(EventKind.ENGINE_STARTED, name="e", info={"model": commit, "note": "endpoint cred 42"})
    text = run.events_path.read_text()
    assert "sk-env-value" not in text and "endpoint cred 42" not in text and "abc.def" not in text
    events = run.records().events
    assert events[0].error == "HTTP 401: key [redacted] refused; got [redacted]; Authorization: [redacted]"
    assert events[1].reason == "failed 2 times: echo [redacted]"
    assert events[2].info == {"model": commit, "note": "[redacted]"}  # a known value everywhere; shapes in errors only
