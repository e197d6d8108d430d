"""Safetensors checkpoints as byte ranges: read the tensor table, write shards piece by piece.

A tensor sliced along its first dimension is a run of whole rows, and rows are contiguous in a
safetensors file, so an expert slice is one byte range of the source file. The surgery
therefore never materializes a tensor: every output tensor is a list of `Piece`s (file, offset,
length), copied with `os.copy_file_range` (kernel-side, no user memory) into shards whose
headers are known before the first byte is written. Works for any dtype, packed ones included.
A tensor that must be transformed (quantized) instead of copied is a `Computed` piece: its
length is known when the plan is made, its bytes are made only when the shard is written.
`publish` builds a model folder beside its destination and renames it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from omk_ray.console import report_count

INDEX_NAME = "model.safetensors.index.json"
PROVENANCE_NAME = "omk_ray_provenance.json"
# When, where and by which command a variant was built: not what it is (a rebuild elsewhere is the same variant).
PROVENANCE_CIRCUMSTANCES = ("created_at", "base_path", "tool", "omk_ray_version")


def provenance_identity(data: bytes) -> str:
    """What a built variant's provenance says of the variant (part of its weights identity,
    farm/planner.py): the record without its circumstances, so the same build made again (another
    artifacts root, another node, a later day) keeps its identity and its samples."""
    import hashlib

    from omk_ray.config import stable_hash

    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):  # not omk-ray's record: its bytes are all there is to go by
        return hashlib.sha256(data).hexdigest()
    return stable_hash({k: v for k, v in record.items() if k not in PROVENANCE_CIRCUMSTANCES}, length=64)
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
COPY_CHUNK = 64 << 20


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read as safetensors; the message names the file."""


@dataclass(frozen=True)
class SourceTensor:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one slice along the first dimension."""
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0


@dataclass(frozen=True)
class Piece:
    file: Path
    offset: int
    length: int


@dataclass(frozen=True)
class Computed:
    """Bytes made when the shard is written: `make()` returns exactly `length` bytes."""

    length: int
    make: Callable[[], bytes]


@dataclass
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    pieces: list[Piece | Computed] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.length for p in self.pieces)


def read_header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, header dict) of one safetensors file."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 << 20:
                raise CheckpointError(f"{path}: header of {size} bytes; not a safetensors file")
            header = json.loads(f.read(size))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return 8 + size, header


def read_tensors(model_dir: str | Path) -> dict[str, SourceTensor]:
    """Every tensor of a checkpoint folder (single file or index + shards), checked for integrity."""
    model_dir = Path(model_dir)
    index_path = model_dir / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({err})") from None
        files = sorted(set(weight_map.values()))
    else:
        weight_map = None
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES) if model_dir.is_dir() else []
        hint = f" (found {others}: convert them to safetensors first)" if others else ""
        raise CheckpointError(f"{model_dir}: no safetensors weights{hint}")
    tensors: dict[str, SourceTensor] = {}
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise CheckpointError(f"{index_path}: lists shard {name}, which is missing")
        try:
            with safe_open(path, framework="numpy") as f:  # validates the header against the file size
                keys = set(f.keys())
        except Exception as err:  # SafetensorError, OSError: a truncated or foreign file
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
        start, header = read_header(path)
        for key in keys:
            entry = header[key]
            begin, end = entry["data_offsets"]
            if key in tensors:
                raise CheckpointError(f"{model_dir}: tensor {key} is stored twice ({tensors[key].file.name}, {name})")
            tensors[key] = SourceTensor(key, path, entry["dtype"], tuple(entry["shape"]), start + begin, end - begin)
    if weight_map is not None:
        missing = sorted(k for k, v in weight_map.items() if k not in tensors)
        if missing:
            raise CheckpointError(f"{index_path}: lists tensors that are missing from their shards: {missing[:5]}")
    return tensors


def whole(t: SourceTensor, name: str | None = None) -> OutTensor:
    return OutTensor(name or t.name, t.dtype, t.shape, [Piece(t.file, t.offset, t.nbytes)])


def rows(t: SourceTensor, keep: list[int], name: str | None = None) -> OutTensor:
    """The tensor restricted to the rows `keep` (ascending) of its first dimension."""
    pieces: list[Piece] = []
    row = t.row_bytes
    for i in keep:
        start = t.offset + i * row
        if pieces and pieces[-1].offset + pieces[-1].length == start:
            last = pieces.pop()
            pieces.append(Piece(last.file, last.offset, last.length + row))
        else:
            pieces.append(Piece(t.file, start, row))
    return OutTensor(name or t.name, t.dtype, (len(keep), *t.shape[1:]), pieces)


def shard(tensors: list[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Tensors in order, cut into shards of at most max_shard_bytes (a bigger tensor is alone)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def write_checkpoint(out_dir: Path, tensors: list[OutTensor], max_shard_bytes: int) -> list[str]:
    """Write the shards (and the index if more than one); returns the file names written."""
    shards = shard(tensors, max_shard_bytes)
    names = [SINGLE_NAME] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    weight_map = {}
    written = 0
    for name, members in zip(names, shards):
        write_shard(out_dir / name, members, on_tensor=lambda n, base=written: report_count(
            "tensors written", base + n, len(tensors)))
        written += len(members)
        weight_map.update({t.name: name for t in members})
    if len(shards) > 1:
        total = sum(t.nbytes for t in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


def write_shard(path: Path, tensors: list[OutTensor], metadata: dict[str, str] | None = None,
                on_tensor: Callable[[int], None] | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        out.flush()
        handles: dict[Path, int] = {}
        try:
            for n, t in enumerate(tensors, 1):
                if on_tensor:
                    on_tensor(n - 1)
                for p in t.pieces:
                    if isinstance(p, Computed):
                        write_all(out.fileno(), p.make(), p.length, t.name)
                        continue
                    if p.file not in handles:
                        handles[p.file] = os.open(p.file, os.O_RDONLY)
                    copy_range(handles[p.file], out.fileno(), p.offset, p.length)
            if on_tensor:
                on_tensor(len(tensors))
        finally:
            for fd in handles.values():
                os.close(fd)


def write_all(fd: int, data: bytes, length: int, name: str) -> None:
    if len(data) != length:
        raise CheckpointError(f"tensor {name}: {len(data)} bytes computed, {length} planned")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Append length bytes of src at offset to dst, in the kernel where it can."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(length - done, 1 << 30), offset + done)
        except OSError:
            n = 0
        if n == 0:  # not supported here (or across these filesystems): plain reads and writes
            while done < length:
                chunk = os.pread(src_fd, min(COPY_CHUNK, length - done), offset + done)
                if not chunk:
                    raise CheckpointError(f"unexpected end of file while copying {length} bytes at {offset}")
                os.write(dst_fd, chunk)
                done += len(chunk)
            return
        done += n


def check_written(out_dir: Path, tensors: list[OutTensor]) -> None:
    """Re-open what was written and compare it with the plan (names, dtypes, shapes)."""
    written = read_tensors(out_dir)
    for t in tensors:
        got = written.get(t.name)
        if got is None or got.dtype != t.dtype or got.shape != t.shape:
            raise CheckpointError(f"{out_dir}: tensor {t.name} was not written as planned")
    if len(written) != len(tensors):
        raise CheckpointError(f"{out_dir}: {len(written)} tensors written, {len(tensors)} planned")


def read_bytes(t: SourceTensor, start: int, length: int, into: bytearray | None = None) -> memoryview:
    """`length` bytes of the tensor's data from byte `start` on, read into `into` (reused, so no
    fresh memory is touched) or a new buffer; writable, for torch.frombuffer."""
    if start + length > t.nbytes:
        raise CheckpointError(f"{t.file}: bytes {start}..{start + length} are outside tensor {t.name}")
    buffer = into if into is not None and len(into) >= length else bytearray(length)
    view = memoryview(buffer)[:length]
    with open(t.file, "rb", buffering=0) as f:
        f.seek(t.offset + start)
        got = f.readinto(view)
    if got != length:
        raise CheckpointError(f"{t.file}: unexpected end of data in tensor {t.name}")
    return view


@contextmanager
def publish(out_dir: Path, error: type[Exception] = CheckpointError) -> Iterator[Path]:
    """A temporary folder beside `out_dir` to fill; renamed to `out_dir` when the block ends
    without error, deleted otherwise. An existing `out_dir` is never overwritten."""
    if out_dir.exists():
        raise error(f"{out_dir} already exists; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, out_dir)
        except OSError:
            raise error(f"{out_dir} appeared while it was being written; refusing to overwrite it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model(out: Path, source_dir: Path, tensors: list[OutTensor], config: dict, record: dict,
                max_shard_bytes: int) -> None:
    """A whole model folder: the shards, the source's side files, config.json, and the provenance
    (with the source's own provenance, if it has one, as `base_provenance`); checked after writing."""
    write_checkpoint(out, tensors, max_shard_bytes)
    copy_side_files(source_dir, out)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_provenance(out, source_dir, record)
    check_written(out, tensors)


def write_provenance(out: Path, source_dir: Path, record: dict) -> None:
    """`omk_ray_provenance.json` in `out`, with `source_dir`'s own provenance as `base_provenance`."""
    parent = source_dir / PROVENANCE_NAME
    if parent.is_file():
        record = {**record, "base_provenance": json.loads(parent.read_text())}
    (out / PROVENANCE_NAME).write_text(json.dumps(record, indent=2) + "\n")


def copy_side_files(model_dir: Path, out_dir: Path) -> None:
    """Tokenizer, chat template, generation config, README...: every top-level file but weights."""
    for src in sorted(model_dir.iterdir()):
        if src.is_file() and not src.name.endswith(WEIGHT_SUFFIXES) and src.name not in (
            INDEX_NAME, "config.json", PROVENANCE_NAME,
        ):
            shutil.copy2(src, out_dir / src.name)


def parse_size(value: int | str) -> int:
    """Bytes from 123, '500MB', '5GB', '2GiB'."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)
