"""lm-eval's own `hf` backend on the shipped toy and omk-ray's toy loglikelihood tasks: the reference
that the scoring parity tests compare omk-ray's engines with."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import yaml

from omk_ray.benches.lmeval import OWN_TASKS

TOY = Path(__file__).parents[2] / "omk_ray" / "_data" / "toy" / "model"
TASKS = ("toy_mc", "toy_ll", "toy_rolling")
MAX_LENGTH = 64  # short enough that the rolling documents (54-150 tokens) take 1 to 3 windows
TOLERANCE = 1e-4  # per log-likelihood, absolute (float32 forward passes of different batch shapes),
RELATIVE = 1e-6  # or relative, whichever is larger (a rolling document sums ~150 token log-probabilities)


def task_folder(into: Path) -> Path:
    """The toy tasks with absolute data paths (lm-eval reads data_files relative to the working folder)."""
    into.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        cfg = yaml.safe_load((OWN_TASKS / "toy" / f"{task}.yaml").read_text())
        cfg["dataset_kwargs"]["data_files"]["test"] = str(OWN_TASKS / "toy" / f"{task}.jsonl")
        (into / f"{task}.yaml").write_text(yaml.safe_dump(cfg))
    return into


@functools.lru_cache(maxsize=1)
def lmeval_reference() -> dict:
    """lm-eval's run: {task: {"samples": {doc_id: sample}, "results": {metric,filter: value}}}, and under
    "logs" the folder where it wrote its logs as `lm_eval --output_path DIR --log_samples` does."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    folder = task_folder(Path(tempfile.mkdtemp(prefix="omk-lmeval-tasks-")))
    logs = Path(tempfile.mkdtemp(prefix="omk-lmeval-logs-"))
    tracker = EvaluationTracker(output_path=str(logs))
    out = simple_evaluate(model="hf", model_args=f"pretrained={TOY},dtype=float32,max_length={MAX_LENGTH}",
                          tasks=list(TASKS), task_manager=TaskManager(include_path=str(folder)), batch_size=8,
                          device="cpu", log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                          evaluation_tracker=tracker)
    samples = out.pop("samples")
    tracker.save_results_aggregated(results=out, samples=samples)
    for task in TASKS:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    reference = {task: {"samples": {str(s["doc_id"]): json.loads(json.dumps(s, default=_plain)) for s in samples[task]},
                        "results": out["results"][task]} for task in TASKS}
    return {**reference, "logs": logs}


def _plain(value):
    """numpy scalars (lm-eval's log-likelihoods and is_greedy) as Python numbers and bools."""
    return value.item() if hasattr(value, "item") else str(value)


def logged_loglikelihoods(sample: dict) -> list[tuple[float, bool]]:
    """A logged sample's (log-likelihood, is_greedy) per request (a rolling one: (ll, None))."""
    out = []
    for resp in sample["resps"]:
        value = resp[0]
        out.append((float(value[0]), str(value[1]) == "True") if isinstance(value, (list, tuple)) else (float(value), None))
    return out


def check_engine_parity(engine, recipe=None) -> dict:
    """Score the three toy tasks on `engine` as the farm does (bench -> request -> engine -> scorer) and
    assert lm-eval's per-document log-likelihoods, is_greedy and metrics, and its aggregates.
    Returns {task: largest |Δ log-likelihood|} for the report."""
    import math

    from omk_ray.benches import make_bench
    from omk_ray.benches.lmeval import aggregate, finish_aggregate
    from omk_ray.config import BenchSpec, Recipe

    reference = lmeval_reference()
    worst = {}
    for task in TASKS:
        bench = make_bench(BenchSpec(name=task, kind="lmeval", options={"task": task}))
        docs = bench.docs()
        logged = reference[task]["samples"]
        assert sorted(d.id for d in docs) == sorted(logged)
        completions = engine.generate_batch([d.request(0, task) for d in docs], recipe or Recipe())
        deltas, maps = [], []
        for doc, completion in zip(docs, completions):
            assert completion.error is None, completion.error
            theirs = logged_loglikelihoods(logged[doc.id])
            ours = completion.loglikelihoods
            assert len(ours) == len(theirs)
            for (ll, greedy), (their_ll, their_greedy) in zip(ours, theirs):
                deltas.append(abs(ll - their_ll))
                assert ll == _approx(their_ll), (task, doc.id, ours, theirs)
                if their_greedy is not None:
                    assert greedy == their_greedy, (task, doc.id, ours, logged[doc.id]["resps"])
            score = bench.score(doc, completion)
            maps.append(score.metrics)
            for metric in logged[doc.id]["metrics"]:
                value = logged[doc.id][metric]
                if isinstance(value, (int, float)):  # acc, acc_norm, perplexity: lm-eval's per-document value
                    assert score.metrics[f"{metric},none"] == _approx(float(value)), (task, doc.id, metric)
            if task == "toy_mc":
                lls = [ll for ll, _ in ours]
                assert score.chosen == lls.index(max(lls)) and score.extracted == doc.meta["doc"]["choices"][score.chosen]
        for key, value in reference[task]["results"].items():
            if "," not in key or "_stderr" in key:
                continue
            ours_value = finish_aggregate(key, aggregate(maps, key))
            assert math.isclose(ours_value, float(value), rel_tol=1e-3), (task, key, ours_value, value)
        worst[task] = max(deltas)
    return worst


def _approx(value: float):
    import pytest

    return pytest.approx(value, abs=TOLERANCE, rel=RELATIVE)


def made_up_scorer():
    """An echo engine that scores: made-up log-likelihoods that differ from choice to choice and document to
    document (no model), for tests of what happens to scored rows after the engine."""
    from omk_ray.engines.base import Completion
    from omk_ray.engines.echo import EchoEngine

    class MadeUpScorer(EchoEngine):
        scores = True

        async def score(self, request, recipe):
            if request.scoring.rolling is not None:
                text = request.scoring.rolling
                return Completion(text="", finish_reason="scored",
                                  loglikelihoods=[(-0.37 * len(text), len(text) % 3 == 0)])
            pairs = request.scoring.pairs
            if "mul 24 4" in pairs[0][0]:  # toy_mc's 106, 95, 97, 96 (gold): acc picks 96, acc_norm (per character) 106
                lls = [-2.95, -2.2, -2.15, -2.1]
            else:  # the pick turns with the context's length
                lls = [-0.7 * len(x) - 0.05 * ((len(c) - i) % 4) for i, (c, x) in enumerate(pairs)]
            return Completion(text="", finish_reason="scored",
                              loglikelihoods=[(ll, i % 2 == 0) for i, ll in enumerate(lls)])

    return MadeUpScorer
