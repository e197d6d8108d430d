"""Few-shot contexts at parity with lm-eval: for every document, omk-ray's scoring pairs (loglikelihood
tasks, plain text) and chat messages (generate_until, lm-eval's fewshot_as_multiturn) equal the requests
lm-eval's own evaluator builds (`TaskManager.load`, `set_config("num_fewshot")`, `set_fewshot_seed(1234)`,
`build_all_requests`), whatever subset or --limit asks; the shot count is part of each sample's identity."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import yaml

from helpers.lmeval_scoring import TASKS, task_folder
from omk_ray.benches import make_bench
from omk_ray.benches.lmeval import OWN_TASKS
from omk_ray.config import BenchSpec

TOY = OWN_TASKS / "toy"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The shipped toy tasks (absolute data paths) and variants of them that draw their examples otherwise."""
    folder = task_folder(tmp_path_factory.mktemp("fewshot-tasks"))
    mc = yaml.safe_load((TOY / "toy_mc.yaml").read_text())
    train = folder / "toy_mc_train.jsonl"
    rows = [json.loads(line) for line in (TOY / "toy_mc.jsonl").read_text().splitlines()]
    train.write_text("".join(json.dumps({**r, "prompt": r["prompt"].replace("add", "plus")}) + "\n" for r in rows[:7]))
    variants = {
        # its own few-shot split (the evaluated document can never be among its examples)
        "toy_mc_split": {**mc, "dataset_kwargs": {"data_files": {"test": str(TOY / "toy_mc.jsonl"), "train": str(train)}},
                         "fewshot_split": "train"},
        # a fewshot split that is the evaluated split: lm-eval leaves the document out of its own examples
        "toy_mc_self": {**mc, "dataset_kwargs": {"data_files": {"test": str(TOY / "toy_mc.jsonl")}},
                        "fewshot_split": "test", "fewshot_delimiter": "\n###\n"},
        # the training split as the fallback, the first_n sampler, and a YAML default of 2 shots
        "toy_mc_first": {**mc, "dataset_kwargs": {"data_files": {"test": str(TOY / "toy_mc.jsonl"), "train": str(train)}},
                         "training_split": "train", "fewshot_config": {"sampler": "first_n"}, "num_fewshot": 2},
        # generate_until over toy_ll's data: chat messages, a description, the test split as the fallback
        "toy_gen": {"task": "toy_gen", "dataset_path": "json", "output_type": "generate_until",
                    "dataset_kwargs": {"data_files": {"test": str(TOY / "toy_ll.jsonl")}}, "test_split": "test",
                    "description": "Answer with the letters only.", "doc_to_text": "{{prompt}}",
                    "doc_to_target": "{{answer}}", "target_delimiter": " ", "generation_kwargs": {"until": ["\n"]},
                    "metric_list": [{"metric": "exact_match"}], "metadata": {"version": 1.0}},
        # a task that fixes zero shots (lm-eval ignores --num_fewshot for it)
        "toy_mc_zero": {**mc, "dataset_kwargs": {"data_files": {"test": str(TOY / "toy_mc.jsonl")}}, "num_fewshot": 0},
    }
    for name, cfg in variants.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, "task": name}))
    return folder


@functools.lru_cache(maxsize=None)
def task_manager(folder: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder))  # indexes lm-eval's tasks too (seconds): once per folder


def lmeval_requests(folder: Path, task: str, shots: int | None, chat: bool = False, limit: int | None = None) -> dict:
    """lm-eval's request arguments per doc id, built as `simple_evaluate` builds them (fewshot seed 1234)."""
    t = task_manager(folder).load([task])["tasks"][task]
    if shots is not None:
        t.set_config(key="num_fewshot", value=shots)
    elif t.get_config("num_fewshot") is None:
        t.set_config(key="num_fewshot", value=0)
    t.set_fewshot_seed(seed=1234)
    template = (lambda messages, add_generation_prompt=True: json.dumps(messages)) if chat else None
    t.build_all_requests(limit=limit, apply_chat_template=chat, fewshot_as_multiturn=chat, chat_template=template)
    out: dict[int, list] = {}
    for instance in sorted(t.instances, key=lambda i: (i.doc_id, i.idx)):
        out.setdefault(instance.doc_id, []).append(instance.args)
    return out


def bench(folder: Path, task: str, shots, **fields):
    return make_bench(BenchSpec(name=task, kind="lmeval", options={"task": task, "include_path": str(folder),
                                                                   "num_fewshot": shots}, **fields))


def ours(doc) -> list:
    """A doc's requests in lm-eval's shape: (context, continuation) pairs, a rolling (text,), chat messages."""
    if doc.scoring is None:
        return [doc.messages]
    if doc.scoring.rolling is not None:
        return [(doc.scoring.rolling,)]
    return [tuple(pair) for pair in doc.scoring.pairs]


def theirs(args: list, chat: bool) -> list:
    return [json.loads(a[0]) for a in args] if chat else [tuple(a) for a in args]


@pytest.mark.parametrize("task", [*TASKS, "toy_mc_split", "toy_mc_self", "toy_gen"])
@pytest.mark.parametrize("shots", [0, 1, 3])
def test_each_documents_context_is_lmevals(folder, task, shots):
    chat = task == "toy_gen"
    reference = lmeval_requests(folder, task, shots, chat=chat)
    docs = bench(folder, task, shots).docs()
    assert sorted(reference) == [d.meta["index"] for d in docs]
    for doc in docs:
        assert ours(doc) == theirs(reference[doc.meta["index"]], chat), (task, shots, doc.id)
    if shots and task != "toy_rolling":  # the examples are there (a rolling document scores its own text only)
        first = ours(docs[0])[0]
        text = json.dumps(first) if chat else first[0]
        assert text.count("<|turn>user" if not chat else '"role": "user"') == shots + 1
    if task == "toy_mc_self" and shots:  # lm-eval's rule: a document is never its own example
        for doc in docs:
            context = doc.scoring.pairs[0][0]
            assert context.count(doc.meta["doc"]["prompt"] + "<turn|>") == 1


def test_the_task_yaml_default_and_its_sampler(folder):
    reference = lmeval_requests(folder, "toy_mc_first", None)  # lm-eval without --num_fewshot: the YAML's 2
    b = bench(folder, "toy_mc_first", "task")
    assert b.num_fewshot == 2 and b.scorer_version.endswith("toy_mc_first@1.0:2-shot")
    docs = b.docs()
    for doc in docs:
        assert ours(doc) == theirs(reference[doc.meta["index"]], False)
    assert docs[5].scoring.pairs[0][0].startswith("<bos><|turn>user\nplus 76 6<turn|>\n<|turn>model\n82\n\n"
                                                  "<bos><|turn>user\nplus 76 3<turn|>")  # first_n: train's first two
    assert bench(folder, "toy_mc", "task").num_fewshot == 0  # no default in its YAML: zero-shot, as lm-eval


def test_limit_and_subsets_keep_each_documents_context(folder):
    """lm-eval's sampler draws for one document after another: omk-ray builds every context in that order
    at load, so --limit's prefix, a subset, or a later resume see the context a full lm-eval run builds."""
    full = {d.id: ours(d) for d in bench(folder, "toy_mc", 3).docs()}
    limited = lmeval_requests(folder, "toy_mc", 3, limit=5)
    assert sorted(limited) == [0, 1, 2, 3, 4]
    for index, args in limited.items():
        assert full[str(index)] == theirs(args, False)
    subset = bench(folder, "toy_mc", 3, subset=["17", "4"]).docs()
    assert [d.id for d in subset] == ["17", "4"] and all(ours(d) == full[d.id] for d in subset)
    other_seed = make_bench(BenchSpec(name="toy_mc", kind="lmeval", options={
        "task": "toy_mc", "include_path": str(folder), "num_fewshot": 3, "fewshot_seed": 7})).docs()
    assert sum(ours(d) != full[d.id] for d in other_seed) > 12


def test_the_shot_count_is_part_of_each_samples_identity(folder):
    zero, five = bench(folder, "toy_mc", 0), bench(folder, "toy_mc", 5)
    assert zero.scorer_version.endswith(":toy_mc@1.0") and five.scorer_version.endswith(":toy_mc@1.0:5-shot")
    hashes = {d.id: d.hash for d in zero.docs()}
    assert all(d.hash != hashes[d.id] for d in five.docs())
    gen = {d.id: d.hash for d in bench(folder, "toy_gen", 0).docs()}
    assert all(d.hash != gen[d.id] for d in bench(folder, "toy_gen", 2).docs())


def scored_rows(grid, store, variants=("e",)) -> None:
    """Store what the plan asks, scored by made-up log-likelihoods (no model)."""
    from helpers.lmeval_scoring import made_up_scorer
    from omk_ray.farm.planner import make_plan
    from omk_ray.farm.rows import RowContext, generate_rows

    plan = make_plan(grid, store, variants=list(variants))
    for work in plan.work:
        ctx = RowContext("run", work.variant, plan.fingerprints[work.variant], work.bench, work.recipe, "echo")
        engine = made_up_scorer()(grid.variant(work.variant), "m")
        table = generate_rows(engine, make_bench(grid.bench(work.bench)), ctx, work.samples)
        store.write_shard(table, work.variant, work.bench, f"u-{work.variant}-{len(store.shard_paths())}")


def grid_asking(folder, path, shots, variants=("e",)):
    from helpers import write_grid
    from omk_ray.config import load_grid

    spec = {"name": "mc", "kind": "lmeval", "options": {"task": "toy_mc", "include_path": str(folder), "num_fewshot": shots}}
    return load_grid(write_grid(path, [{"name": v, "engine": "echo", "model": "m"} for v in variants], [spec]))


@pytest.fixture
def echo_scores(monkeypatch):
    """The echo engine planned as one that scores (the rows' log-likelihoods are made up: helpers)."""
    from omk_ray.engines.echo import EchoEngine

    monkeypatch.setattr(EchoEngine, "scores", True)


def test_a_resume_asks_again_when_num_fewshot_changed(folder, tmp_path, echo_scores):
    """Rows stored zero-shot are stale for the same bench asked 3-shot: the plan generates them again."""
    from omk_ray.farm.planner import make_plan
    from omk_ray.results.store import ResultsStore

    store = ResultsStore(tmp_path / "results")
    zero = grid_asking(folder, tmp_path / "zero.yaml", 0)
    scored_rows(zero, store)
    assert [len(w.samples) for w in make_plan(zero, store).work] == [0]
    three = grid_asking(folder, tmp_path / "three.yaml", 3)
    (again,) = make_plan(three, store).work
    assert (again.stale, len(again.samples)) == (24, 24)
    (limited,) = make_plan(three, store, limit_docs=5).work  # `run --limit`: the same contexts for those docs
    full = {d.id: d.hash for d, _ in again.samples}
    assert len(limited.samples) == 5 and all(d.hash == full[d.id] for d, _ in limited.samples)


def test_compare_refuses_to_pair_different_shot_counts(folder, tmp_path, echo_scores):
    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.samples import AnalysisError
    from omk_ray.results.store import ResultsStore

    store = ResultsStore(tmp_path / "results")
    scored_rows(grid_asking(folder, tmp_path / "zero.yaml", 0, ("a", "b")), store, ("a",))
    scored_rows(grid_asking(folder, tmp_path / "two.yaml", 2, ("a", "b")), store, ("b",))
    with pytest.raises(AnalysisError, match=r"mc: baseline a was asked 0-shot but b 2-shot \(num_fewshot\)"):
        compare(store.root, CompareOptions(baseline="a"))
    scored_rows(grid_asking(folder, tmp_path / "two.yaml", 2, ("a", "b")), store, ("a",))  # a asked again, 2-shot
    comparison = compare(store.root, CompareOptions(baseline="a"))
    assert comparison.benches == ["mc"] and "mc: asked 2-shot (num_fewshot: each context holds 2 examples)" in comparison.notes


def test_refusals_are_clear(folder, tmp_path):
    with pytest.raises(ValueError, match="bad options: num_fewshot"):
        bench(folder, "toy_mc", -1)
    with pytest.raises(ValueError, match="toy_mc_zero fixes num_fewshot: 0 in its YAML"):
        bench(folder, "toy_mc_zero", 5).docs()
    assert bench(folder, "toy_mc_zero", "task").num_fewshot == 0
    source = tmp_path / "mc.jsonl"
    source.write_text((TOY / "toy_mc.jsonl").read_text())
    with pytest.raises(ValueError, match="its 'train' split, which `source: .*mc.jsonl` does not hold"):
        bench(folder, "toy_mc_split", 2, source=str(source)).docs()
    docs = bench(folder, "toy_mc", 2, source=str(source)).docs()  # examples from the evaluated split: the file's
    assert ours(docs[0]) == theirs(lmeval_requests(folder, "toy_mc", 2)[0], False)


def test_a_task_split_by_subject_draws_each_subjects_examples_as_its_own_task(folder, tmp_path):
    """mmlu_all's way (metadata omk_fewshot_by: subject): each subject's documents get the contexts that
    lm-eval's task of that subject alone builds (its own examples, its own sampler seeded 1234)."""
    rows = [json.loads(line) for line in (TOY / "toy_mc.jsonl").read_text().splitlines()]
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    examples = [{**r, "prompt": r["prompt"] + " ex"} for s in subjects for r in [x for x in rows if x["subject"] == s][:4]]
    mc = yaml.safe_load((TOY / "toy_mc.yaml").read_text())
    mc.update(fewshot_split="train", metadata={"version": 1.0, "omk_fewshot_by": "subject"})

    def write(name: str, test: list[dict], train: list[dict]) -> None:
        files = {}
        for split, part in (("test", test), ("train", train)):
            files[split] = str(tmp_path / f"{name}_{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in part))
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**mc, "task": name, "dataset_kwargs": {"data_files": files}}))

    write("toy_mc_subjects", rows, examples)
    for s in subjects:  # lm-eval's way: one task per subject
        write(f"toy_mc_{s}", [r for r in rows if r["subject"] == s], [r for r in examples if r["subject"] == s])
    docs = bench(tmp_path, "toy_mc_subjects", 2).docs()
    for s in subjects:
        reference = lmeval_requests(tmp_path, f"toy_mc_{s}", 2)
        mine = [d for d in docs if d.meta["doc"]["subject"] == s]
        assert len(mine) == len(reference) == 8
        for local, doc in enumerate(mine):
            assert ours(doc) == theirs(reference[local], False)
            assert doc.scoring.pairs[0][0].count(f"{s} ") == 3  # two examples of its own subject, then itself


def test_an_lmeval_group_is_refused_with_the_single_task_to_use():
    with pytest.raises(ValueError, match=r"lm-eval's 'mmlu' is a group of tasks, not one task, and a bench runs "
                                         r"one task: use `task: mmlu_all`"):
        make_bench(BenchSpec(name="mmlu", kind="lmeval", options={"task": "mmlu"})).docs()


def test_mmlu_all_draws_each_subjects_dev_questions_from_the_data_cache(tmp_path):
    """MMLU 5-shot as lm-eval's mmlu_<subject> tasks ask it (description, then the subject's first dev
    questions with their answers): fetch-data fetches the dev split too; here both come from a made-up cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from omk_ray.benches import sources

    def put(split: str, kind: str) -> None:
        ref = sources.HubSplit("cais/mmlu", "all", split)
        data, meta = ref.files(tmp_path)
        data.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"question": f"{kind} {s} {i}?", "subject": s, "choices": ["w", "x", "y", "z"], "answer": i % 4}
                for s in ("anatomy", "virology") for i in range(3)]
        pq.write_table(pa.Table.from_pylist(rows), data)
        meta.write_text(json.dumps({"revision": "r1", "rows": len(rows)}))

    put("test", "test")
    put("dev", "dev")
    b = make_bench(BenchSpec(name="mmlu", kind="lmeval", options={"task": "mmlu_all", "num_fewshot": 2,
                                                                  "domain_field": "subject"}))
    assert b.fetch_data(tmp_path) == ["cais/mmlu/all[test]@r1: 6 rows (cached)",
                                      "cais/mmlu/all[dev]@r1: 6 rows, few-shot examples (cached)"]
    docs = b.docs()
    assert b.scorer_version.endswith(":mmlu_all@1.0:2-shot") and docs[4].domain == "virology"
    choices = "\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    assert docs[4].scoring.pairs[0] == (
        "The following are multiple choice questions (with answers) about virology.\n\n"
        f"dev virology 0?{choices} A\n\ndev virology 1?{choices} B\n\ntest virology 1?{choices}", " A")
    assert all(d.scoring.pairs[0][0].count(f"dev {d.domain} ") == 2 for d in docs)
    zero = make_bench(BenchSpec(name="mmlu", kind="lmeval", options={"task": "mmlu_all"}))
    zero.cache = tmp_path
    assert zero.docs()[4].scoring.pairs[0] == ("The following are multiple choice questions (with answers) about "
                                               f"virology.\n\ntest virology 1?{choices}", " A")
