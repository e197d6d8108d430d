"""Answer extraction for chat-style outputs, used by omk-ray's own lm-eval tasks in this folder.

Chat models answer in prose, Markdown and LaTeX rather than lm-eval's few-shot formats. These
readers take the answer a human grader would take, in a fixed order of evidence, and are
checked against the per-sample scores of the users' lm-eval runs (tests/test_lmeval_parity.py).
"""

from __future__ import annotations

import re

# -- AIME: an integer answer ---------------------------------------------------------------------

_ANSWER_LINE = re.compile(r"(?:^|\n)\s*\**\s*(?:final\s*)?answer\s*:?\s*\**\s*\$?\s*([-+]?\d+)", re.IGNORECASE)
_ANSWER_BOXED = re.compile(r"(?:final\s*answer|answer\s*is|answer\s*:)\s*\*{0,2}\s*\$?\\?boxed?\{?([-+]?\d+)", re.IGNORECASE)
_ENDS_WITH_VALUE = re.compile(r"\b(?:is|equals|=)\s*\$?\s*([-+]?\d+)\s*\$?\.?\s*$", re.IGNORECASE)
_EQUALS_VALUE = re.compile(r"=\s*\*{0,2}\s*\$?\s*([-+]?\d+)\b")
_INTEGER = re.compile(r"[-+]?\d+")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` whose braces hold no nested braces."""
    found = re.findall(r"\\boxed\s*\{([^{}]+)\}", text)
    return found[-1] if found else None


def aime_answer(text: str) -> str | None:
    """In order: the last boxed value, an "Answer: N" line, "the answer is \\boxed N", a last line
    ending "is/= N", the last "= N", the last integer near the end."""
    boxed = last_boxed(text)
    if boxed is not None:
        digits = re.sub(r"[^\d+-]", "", boxed)
        if digits:
            return digits
    for pattern in (_ANSWER_LINE, _ANSWER_BOXED):
        found = pattern.findall(text)
        if found:
            return found[-1]
    last_line = text.rstrip().rsplit("\n", 1)[-1]
    match = _ENDS_WITH_VALUE.search(last_line)
    if match:
        return match.group(1)
    found = _EQUALS_VALUE.findall(text) or _INTEGER.findall(text[-400:])
    return found[-1] if found else None


def aime_process_results(doc: dict, results: list[str]) -> dict[str, int]:
    gold = str(next((v for k, v in doc.items() if k.lower() == "answer"), "")).strip()
    try:
        gold = str(int(gold))
    except ValueError:
        pass
    return {"exact_match": int(aime_answer(results[0] or "") == gold)}


# -- ARC: a choice letter ------------------------------------------------------------------------

_BEST_ANSWER = re.compile(r"best answer is\s*[*_]*\s*\(?([A-D])\b", re.IGNORECASE)
_ANSWER_LETTER = re.compile(r"answer\s*(?:is|:)\s*[*_]*\s*\(?([A-D])\b", re.IGNORECASE)


def choice_letter(text: str) -> str | None:
    """"The best answer is X", else "Answer: X" / "answer is X", else a reply that is only a letter."""
    for pattern in (_BEST_ANSWER, _ANSWER_LETTER):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    bare = text.strip().strip("*().").strip()
    return bare.upper() if re.fullmatch(r"[A-Da-d]", bare) else None


def arc_gold(doc: dict) -> str:
    key = str(doc.get("answerKey", "")).strip()
    return "ABCD"[int(key) - 1] if key in {"1", "2", "3", "4"} else key.upper()


def arc_process_results(doc: dict, results: list[str]) -> dict[str, int]:
    got = choice_letter(results[0] or "")
    return {"exact_match": int(got is not None and got == arc_gold(doc))}
