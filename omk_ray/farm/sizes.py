"""How big a checkpoint is (from its safetensors headers), and how long its engine may take to start.

A safetensors file begins with an 8-byte header length and a JSON header giving every tensor's
dtype, shape and byte offsets: the bytes a checkpoint holds are known without reading its
weights, locally or (huggingface_hub's `get_safetensors_metadata`) through HTTP range requests.

An engine's start on a cold GPU node is download + load + compile + CUDA graph capture: the
download and the load grow with the checkpoint, the rest is about constant. `start_timeout_s`
gives the default of `farm.engine_start_timeout_s` from the checkpoint's bytes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

START_BASE_S = 600.0  # compile, CUDA graphs, warm-up, process start: seen up to ~10 min on large MoE models
ASSUMED_BYTES_PER_S = 100e6  # a cold node's download (about 1 Gb/s) or a slow disk's read
UNKNOWN_SIZE_START_S = 1800.0  # a checkpoint whose size cannot be read here (a hub id, offline)


def safetensors_bytes(path: str | Path) -> int:
    """The tensor bytes one .safetensors file holds, from its header (no weight is read)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)


def checkpoint_bytes(model: str | Path, revision: str | None = None) -> int | None:
    """The tensor bytes of a checkpoint: a local folder (its .safetensors headers; other weight files,
    e.g. GGUF, by size), or a hub id (headers read over HTTP, when the hub answers); None when unknown."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        if files:
            return sum(safetensors_bytes(f) for f in files)
        other = [f for f in folder.iterdir() if f.suffix in (".gguf", ".bin", ".pt")]
        return sum(f.stat().st_size for f in other) or None
    if folder.exists() or str(model).startswith(("/", ".", "~")):
        return None
    return _hub_bytes(str(model), revision)


def _hub_bytes(repo_id: str, revision: str | None) -> int | None:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(repo_id, revision=revision)
    except Exception as err:  # noqa: BLE001 - offline, gated, not a safetensors repo: unknown
        log.debug("size of %s unknown: %s", repo_id, err)
        return None
    return sum(max((t.data_offsets[1] for t in f.tensors.values()), default=0) for f in meta.files_metadata.values())


def start_timeout_s(checkpoint: int | None, base_s: float = START_BASE_S,
                    bytes_per_s: float = ASSUMED_BYTES_PER_S) -> float:
    """Seconds an engine may take to start: a constant part plus the checkpoint read at `bytes_per_s`
    (e.g. 52 GB: 600 + 520 = 1120 s); a checkpoint of unknown size gets UNKNOWN_SIZE_START_S."""
    if checkpoint is None:
        return UNKNOWN_SIZE_START_S
    return round(base_s + checkpoint / bytes_per_s, 1)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def start_timed_out(variant: str, waited_s: float, timeout_s: float, phase: str, checkpoint: int | None,
                    configured: bool) -> str:
    """The message of an engine that did not start in time: which phase, how long, and what to change."""
    size = f"a {human_bytes(checkpoint)} checkpoint" if checkpoint is not None else "a checkpoint of unknown size"
    origin = ("farm.engine_start_timeout_s" if configured else
              f"the default for {size}: {START_BASE_S:.0f} s + its bytes at {ASSUMED_BYTES_PER_S / 1e6:.0f} MB/s"
              if checkpoint is not None else f"the default for {size}")
    return (f"engine of variant {variant!r} did not start in {waited_s:.0f} s (timeout {timeout_s:.0f} s, {origin}); "
            f"it was {phase}. Raise farm.engine_start_timeout_s if this node is slow to download or compile")
