"""A Hugging Face `config.json` (as a dict), read the one way every step reads it.

    text_config(config)   the language model's part: `text_config` of a multimodal config
                          (Gemma 4), else the config itself; the same dict, so edits stick
    num_experts(config)   experts per MoE layer, whatever the family calls it (num_experts,
                          num_local_experts, n_routed_experts), anywhere in the config; None when
                          absent, or when two places disagree
    top_k(config)         experts each token is routed to (top_k_experts, num_experts_per_tok);
                          the largest where a config names it twice
    find_keys(obj, keys)  (path, value) of every occurrence, for the steps that rewrite them
"""

from __future__ import annotations

from typing import Any

EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
TOP_K_KEYS = ("top_k_experts", "num_experts_per_tok")


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def expert_counts(config: dict[str, Any]) -> set[int]:
    """Every expert count the config states."""
    return {v for _, v in find_keys(config, EXPERT_COUNT_KEYS)}


def num_experts(config: dict[str, Any]) -> int | None:
    counts = expert_counts(config)
    return counts.pop() if len(counts) == 1 else None


def top_k(config: dict[str, Any]) -> int | None:
    return max((v for _, v in find_keys(config, TOP_K_KEYS)), default=None)


def find_keys(obj: Any, keys: tuple[str, ...], path: tuple = (), int_only: bool = True):
    """(path, value) of every occurrence of the keys in nested dicts (integer values only, unless not `int_only`)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and (not int_only or (isinstance(v, int) and not isinstance(v, bool))):
                yield (*path, k), v
            yield from find_keys(v, keys, (*path, k), int_only)
