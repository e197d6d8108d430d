"""A local JSONL bench with an exact-match scorer.

One problem per line: `{"id", "prompt" (or "messages"), "target", "domain"?, "subdomain"?}`.
Options: `answer_regex` (the answer is the last match's first group, else the whole
response), `case_sensitive` (default false), and those of every bench.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import Field, field_validator

from omk_ray.benches.base import Bench, BenchOptions, Doc, Score
from omk_ray.benches.sources import json_kind
from omk_ray.engines.base import Completion
from omk_ray.files import not_utf8


class JsonlOptions(BenchOptions):
    answer_regex: str | None = Field(None, description="the answer is the last match (its first group)")
    case_sensitive: bool = False

    @field_validator("answer_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as err:
            raise ValueError(f"{value!r} is not a valid regular expression: {err}") from None
        if groups > 1:
            raise ValueError(f"{value!r} has {groups} groups and the answer is the first one's match: "
                             "make the others non-capturing, (?:...)")
        return value


class JsonlBench(Bench):
    Options = JsonlOptions

    def load_docs(self) -> list[Doc]:
        path = Path(self.spec.source or "")
        if not path.is_file():
            raise FileNotFoundError(f"bench {self.spec.name!r}: data file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(not_utf8(path, err)) from None
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: not a bench problem (a JSON {json_kind(row)}, not an object "
                                     '{"id", "prompt", "target", ...})')
                messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
                if not _chat_messages(messages):
                    raise ValueError(f"{path}:{n}: `messages` must be a list of {{\"role\": ..., \"content\": ...}} "
                                     f"objects with string values, not {json.dumps(messages)[:80]}")
                docs.append(Doc(
                    id=str(row.get("id", n)),
                    messages=messages,
                    target=None if row.get("target") is None else str(row["target"]),
                    domain=row.get("domain"),
                    subdomain=row.get("subdomain"),
                ))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON object ({err.msg} at column {err.colno})") from None
            except KeyError:
                raise ValueError(f"{path}:{n}: a problem needs `prompt` (text) or `messages` (chat); this line has "
                                 f"neither (its keys: {', '.join(map(str, row)) or 'none'})") from None
            except (TypeError, AttributeError):
                raise ValueError(f"{path}:{n}: a problem is a JSON object with `prompt` or `messages`, "
                                 f"not {line.strip()[:60]}") from None
        return docs

    def score(self, doc: Doc, completion: Completion) -> Score:
        extracted = completion.text.strip()
        pattern = self.options.answer_regex
        if pattern:
            matches = re.findall(pattern, completion.text)
            extracted = (matches[-1] if matches else "").strip()
        target = (doc.target or "").strip()
        if not self.options.case_sensitive:
            correct = extracted.casefold() == target.casefold()
        else:
            correct = extracted == target
        return Score(score=float(correct), correct=correct, extracted=extracted, metrics={"exact_match": float(correct)})


def _chat_messages(messages: object) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)
