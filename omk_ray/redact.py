"""Secrets never reach a row or a log: `scrub` blanks known secret values and anything shaped like a key.

Known values: the environment's API keys and tokens (OPENAI_API_KEY, HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
any variable whose name ends in _KEY, _TOKEN, _SECRET or _PASSWORD) plus those a caller passes (an
engine's own key). Shapes: `Bearer ...`, `sk-...`, `hf_...`, and runs of 32 or more base64/hex
characters that mix letters and digits (`_` and `-` split runs, so file names stay readable).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"
SECRET_ENV = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD)$|^(OPENAI_API_KEY|HF_TOKEN|HUGGING_FACE_HUB_TOKEN)$", re.I)
SHAPES = re.compile(
    r"(?i:bearer)\s+\S+"
    r"|\bsk-[A-Za-z0-9_\-]{8,}"
    r"|\bhf_[A-Za-z0-9]{8,}"
    r"|(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[0-9])(?=[A-Za-z0-9+/]*[A-Za-z])[A-Za-z0-9+/]{32,}={0,2}"
)
MIN_SECRET = 8  # shorter values ("1", "true", "python") would blank ordinary words


def known_secrets(extra: Iterable[str] = ()) -> list[str]:
    values = {v for name, v in os.environ.items() if SECRET_ENV.search(name)} | set(extra)
    return sorted((v for v in values if v and len(v) >= MIN_SECRET), key=len, reverse=True)


def scrub(text: str | None, extra: Iterable[str] = (), shapes: bool = True) -> str | None:
    """`text` with every known secret value and (unless not `shapes`) every key-shaped token replaced
    by [redacted]."""
    if not text:
        return text
    for value in known_secrets(extra):
        text = text.replace(value, MASK)
    return SHAPES.sub(MASK, text) if shapes else text


def scrub_all(value: Any, extra: Iterable[str] = (), shapes: bool = True) -> Any:
    """`value` (text, or lists and dicts holding text) with every string scrubbed (`scrub`)."""
    if isinstance(value, str):
        return scrub(value, extra, shapes)
    if isinstance(value, dict):
        return {k: scrub_all(v, extra, shapes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_all(v, extra, shapes) for v in value]
    return value


def grid_secrets(grid: Any) -> list[str]:
    """The values of the environment variables a grid's variants name as their keys (`api_key_env`),
    whatever those variables are called."""
    names = {(v.engine_args.extra or {}).get("api_key_env") for v in grid.variants}
    return [os.environ[n] for n in names if isinstance(n, str) and os.environ.get(n)]


class ScrubbingFormatter(logging.Formatter):
    """A log formatter that scrubs every line it formats (`scrub`), e.g. for a run's run.log."""

    def __init__(self, fmt: str, extra: Iterable[str] = ()):
        super().__init__(fmt)
        self.extra = tuple(extra)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), self.extra) or ""
