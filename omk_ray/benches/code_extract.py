"""Finding the program in a model's answer (pure text work: nothing here runs the code).

Two rules, each matching the harness whose baselines the users keep:

- `last_fenced_block` (LiveCodeBench): the lines between the last two lines that contain
  a fence; with fewer than two fence lines, the whole answer minus a trailing fence.
- `function_code` (the users' `humaneval_chat` filter, also used for MBPP): among the
  fenced blocks, the last one that still holds a function once trimmed to its longest
  parseable prefix (models often trail reasoning inside the fence); failing that, the
  answer without its opening fence, cut at the next fence.
"""

from __future__ import annotations

import ast
import re

FENCED_BLOCK = re.compile(r"[ \t]*```(?:python|py)?[ \t]*\n((?:(?!```).)*?)\n[ \t]*```", re.DOTALL | re.IGNORECASE)
OPENING_FENCE = re.compile(r"^\s*```(?:python|py)?\s*\n?", re.IGNORECASE)
TRAILING_FENCE = re.compile(r"\n?```\s*$")


def last_fenced_block(text: str) -> str:
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) >= 2:
        return "\n".join(lines[fences[-2] + 1 : fences[-1]])
    return TRAILING_FENCE.sub("", text)


def function_code(text: str) -> str:
    for block in reversed(FENCED_BLOCK.findall(text)):
        code = longest_function_prefix(block)
        if code is not None:
            return code
    rest = OPENING_FENCE.sub("", text)
    end = rest.find("```")
    if end != -1:
        rest = rest[:end]
    code = longest_function_prefix(rest)
    return rest if code is None else code


def longest_function_prefix(block: str) -> str | None:
    """The longest run of leading lines that parses and defines a function with a real body."""
    lines = _dedent_by_first_line(block).split("\n")
    best = None
    for n in range(1, len(lines) + 1):
        candidate = "\n".join(lines[:n]).rstrip()
        if not candidate.strip():
            continue
        try:
            tree = ast.parse(candidate)
        except (SyntaxError, ValueError):
            continue
        if _defines_real_function(tree):
            best = candidate
    return best if best is not None and "def " in best else None


def _dedent_by_first_line(block: str) -> str:
    """Remove the first non-blank line's indentation wherever a line starts with it.

    Unlike textwrap.dedent this survives stray prose at column 0 inside an indented block.
    """
    first = next((line for line in block.split("\n") if line.strip()), "")
    indent = first[: len(first) - len(first.lstrip())]
    if not indent:
        return block
    return "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in block.split("\n"))


def _defines_real_function(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            body = node.body
            docstring_only = (
                len(body) == 1
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            )
            if not docstring_only:
                return True
    return False
