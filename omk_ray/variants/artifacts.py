"""Variants by fingerprint: built once under an artifact root, reused (never rebuilt), shareable
over the Hugging Face Hub so every node of a cluster loads the same bytes.

`ensure_variant(build, artifact_root)` returns `artifact_root/<fingerprint>/`, building it if it
is not there yet (under a file lock, so concurrent farm tasks build it once). The fingerprint
hashes the base (hub id + resolved commit, or the sha256 of a local folder's weights and config),
the drop map's content, the quantization scheme and `BUILDER_VERSION`; the strategy that chose
the drop map is recorded in the provenance but is not part of the identity: two strategies that
pick the same experts give the same variant.

The `build:` block of a grid variant (`BuildSpec`: one pydantic model per kind of build, told apart
by the key that gives the drop map, variants/spec.py) accepts these keys:

    base: str                    required; checkpoint folder or Hugging Face hub id
    revision: str                hub branch, tag or commit of `base`
    # the drop map: give one of drop_map / scores / profile_prompts (or none, to only quantize)
    drop_map: str | dict         a ready drop map (JSON file, or the {"layer": [ids]} mapping)
    scores: str                  CD-scores JSON (from `omk-ray profile`)
    profile_prompts: str         prompts JSONL to profile `base` with ("default": the shipped set);
                                 the scores are cached under artifact_root/cd/
    profile_generate_tokens: int greedy tokens generated per prompt before the replay (default 0)
    profile_workers: int         Ray tasks to shard the profiling over (default 1)
    # with scores / profile_prompts only: how the drop map is chosen (`DropMapSpec`)
    strategy: str                pooled|max|mean|geomean|sum|lp|softmax|second|topk-mean|random (default max)
    criterion: str               per-class saliency: cd (default), frequency, weighted-frequency, ean,
                                 ean-mean, weighted-ean, reap, max-activation (see variants/cdscores.py)
    target: int | drop: int      experts kept / dropped per layer (exactly one with scores/profile)
    protect_top: int             never drop a layer's N best experts (default 0)
    protect_per_class: int       never drop any class's N best experts of a layer (default 0)
    protect_super: bool          never drop REAP's super experts (default false);
    protect_super_all_layers: bool  look for them in every layer, not the first 75% (default false)
    normalize: str               mean|rank|none (default mean; `pooled` ignores it)
    alpha: float                 score = wnorm * alpha + tc (default 2.0)
    classes: [str]               classes to aggregate ("a+b" merges two); default all top-level
    split_classes: [str] | {str: [str]}   replace a class by its subclasses (e.g. [science])
    weights: {str: float}        per-class weight on the normalized scores
    params: {str: float}         strategy parameters: p (lp), temperature (softmax), k (topk-mean), seed (random)
    quantization: str            NVFP4A16 (built by omk-ray, streaming, checked against vLLM's layout);
                                 another compressed-tensors preset needs the `quant` extra; or gguf;
                                 default none
    nvfp4_format: str            NVFP4A16's serialization: compressed-tensors (default) or modelopt
    gguf: {type, base_type, imatrix, imatrix_ctx, imatrix_chunks, allow_fallback}
                                 with `quantization: gguf` (see variants/gguf.py): e.g.
                                 {type: Q6_K, imatrix: calibration.txt, base_type: F16}
    hub_repo: str                private Hub repo holding variants as <fingerprint>/ folders:
                                 pulled from before building
    push: bool                   push after building (default false; needs hub_repo)

Relative paths are resolved against `base_dir` (the grid config's folder). The Hub token comes
from the environment (HF_TOKEN) or the Hugging Face cache, through huggingface_hub; it is never
passed around or written anywhere by omk-ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import ValidationError

from omk_ray.config import stable_hash
from omk_ray.console import report_count, report_step, reporting
from omk_ray.files import write_text_atomic
from omk_ray.variants.dropmap import plan_drop_map, validate_drop_map
from omk_ray.variants.spec import (
    BuildSpec, FromMapBuild, FromProfileBuild, FromScoresBuild, GGUFOptions, _Build, explain, parse_build_spec,
)  # fmt: skip
from omk_ray.variants.quantize import QUANT_VERSION
from omk_ray.variants.surgery import SURGERY_VERSION

# Bump the first number whenever the bytes a build writes would change.
BUILDER_VERSION = f"1/surgery{SURGERY_VERSION}/quant{QUANT_VERSION}"
CD_CACHE = "cd"
STAGING = ".staging"
log = logging.getLogger(__name__)


class BuildError(ValueError):
    """A build block that cannot be built; the message names the key or file."""


@dataclass
class ResolvedBuild:
    spec: _Build
    fingerprint: str
    base_path: Path
    base_identity: dict[str, Any]
    drop_map: dict[str, list[int]] | None
    protected: dict[str, list[int]] | None

    @property
    def provenance(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "builder_version": BUILDER_VERSION,
            "base": self.base_identity,
            "build": self.spec.model_dump(mode="json", exclude_none=True),
        }


def parse_build(build: dict | BuildSpec) -> _Build:
    """A build block as its kind's model (variants/spec.py); BuildError naming each problem."""
    try:
        return parse_build_spec(build)
    except ValidationError as err:
        raise BuildError(f"invalid build block: {explain(err)}") from None


def fingerprint_of(base_identity: dict, drop_map: dict | None, quantization: str | dict | None) -> str:
    return stable_hash({
        "builder": BUILDER_VERSION,
        "base": base_identity,
        "drop_map": validate_drop_map(drop_map) if drop_map else None,
        "quantization": quantization,
    })


def artifact_fingerprint(build: dict | BuildSpec, artifact_root: str | Path, base_dir: str | Path | None = None) -> str:
    """The fingerprint `ensure_variant` would build under (may profile the base to know it)."""
    return resolve_build(build, artifact_root, base_dir).fingerprint


def ensure_variant(build_spec: dict | BuildSpec, artifact_root: str | Path, base_dir: str | Path | None = None) -> Path:
    """`artifact_root/<fingerprint>/`: reused if present, else pulled from `hub_repo` if there,
    else built (prune, then quantize) and optionally pushed."""
    root = Path(artifact_root)
    root.mkdir(parents=True, exist_ok=True)
    resolved = resolve_build(build_spec, root, base_dir)
    if resolved.drop_map is None and not resolved.spec.quantization:
        return resolved.base_path  # drops nothing, quantizes nothing: the base itself
    final = root / resolved.fingerprint
    if final.is_dir():
        report_step("reused", str(final))
        return final
    spec = resolved.spec
    with FileLock(str(root / f".{resolved.fingerprint}.lock")):
        if final.is_dir():  # built by someone else while we waited
            return final
        if spec.hub_repo and pull_variant(spec.hub_repo, resolved.fingerprint, final):
            return final
        _build(resolved, final, root)
    if spec.push:
        push_variant(spec.hub_repo, final, resolved.fingerprint)
    return final


def _build(resolved: ResolvedBuild, final: Path, root: Path) -> None:
    from omk_ray.variants.surgery import prune_checkpoint

    spec = resolved.spec
    if spec.quantization == "gguf":
        from omk_ray.variants.gguf import preflight

        preflight(resolved.base_path)  # fail before pruning on an architecture or tokenizer llama.cpp cannot take
    elif spec.quantization:
        from omk_ray.variants.quantize import check_backend

        check_backend(spec.quantization)  # fail before pruning if the scheme cannot be built here
    source = resolved.base_path
    staged = None
    report_step("building", f"{final} from {resolved.base_path}")
    if resolved.drop_map:
        report_step("surgery", f"dropping {sum(map(len, resolved.drop_map.values()))} experts over "
                    f"{len(resolved.drop_map)} layers")
        if spec.quantization:
            staged = root / STAGING / f"{resolved.fingerprint}-pruned-{uuid.uuid4().hex[:8]}"
        source = prune_checkpoint(resolved.base_path, resolved.drop_map, staged or final,
                                  provenance=resolved.provenance, protected=resolved.protected)
    try:
        if spec.quantization == "gguf":
            from omk_ray.variants.gguf import build_gguf

            build_gguf(source, final, spec.gguf, provenance=resolved.provenance, log=_gguf_log)
        elif spec.quantization:
            from omk_ray.variants.quantize import quantize_checkpoint

            report_step(f"quantizing to {spec.quantization}")
            quantize_checkpoint(source, final, spec.quantization, provenance=resolved.provenance,
                                nvfp4_format=spec.nvfp4_format, device=_device(),
                                progress=lambda done, total: report_count("expert groups quantized", done, total))
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)


def _gguf_log(message: str) -> None:
    """The GGUF build's steps as progress lines (outside a build's `step_lines`, on stderr as before)."""
    if reporting():
        report_step(message)
    else:
        print(message, file=sys.stderr)


def _device() -> str:
    """Where the quantizer computes: the build task's GPU when it was given one (farm/builds.py)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_build(build: dict | BuildSpec, artifact_root: str | Path, base_dir: str | Path | None = None) -> ResolvedBuild:
    spec = parse_build(build)
    root = Path(artifact_root)
    here = Path(base_dir) if base_dir else Path.cwd()

    def local(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else here / p

    base_path, identity = resolve_base(spec.base, spec.revision, root, local(spec.base))
    drop_map, protected = None, None
    if isinstance(spec, FromMapBuild) and isinstance(spec.drop_map, dict):
        drop_map = validate_drop_map(spec.drop_map)
    elif isinstance(spec, FromMapBuild):
        from omk_ray.variants.dropmap import load_drop_map

        drop_map = load_drop_map(local(spec.drop_map))
    elif isinstance(spec, (FromScoresBuild, FromProfileBuild)):
        from omk_ray.variants.cdscores import load_cd

        cd = (load_cd(local(spec.scores)) if isinstance(spec, FromScoresBuild)
              else _profiled_scores(spec, base_path, identity, root, local))
        plan = plan_drop_map(cd, spec)  # the build block is the drop map's spec
        drop_map, protected = plan.drop_map, plan.protected
        report_step("drop map", f"{spec.strategy}: {sum(map(len, drop_map.values()))} experts dropped over "
                    f"{len(drop_map)} layers")
    if drop_map is not None and not any(drop_map.values()):
        drop_map = None  # dropping nothing is the base itself
    quantization = spec.quantization
    if quantization == "gguf":
        from omk_ray.variants.gguf import gguf_identity

        options = spec.gguf or GGUFOptions()
        if options.imatrix:  # the calibration file, found from the config's folder
            options = options.model_copy(update={"imatrix": str(local(options.imatrix).resolve())})
        spec = spec.model_copy(update={"gguf": options})
        quantization = gguf_identity(options, Path(options.imatrix) if options.imatrix else None)
    if spec.nvfp4_format != "compressed-tensors":  # the default keeps the plain scheme name as before
        quantization = {"scheme": quantization, "nvfp4_format": spec.nvfp4_format}
    fingerprint = fingerprint_of(identity, drop_map, quantization)
    return ResolvedBuild(spec, fingerprint, base_path, identity, drop_map, protected)


def _profiled_scores(spec: FromProfileBuild, base_path: Path, identity: dict, root: Path, local) -> dict:
    from omk_ray.variants.profile import load_prompts, profile_model

    prompts = load_prompts(None if spec.profile_prompts == "default" else local(spec.profile_prompts))
    key = stable_hash({"base": identity, "prompts": prompts, "generate_tokens": spec.profile_generate_tokens})
    path = root / CD_CACHE / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    report_step("profiling", f"{len(prompts)} prompts on {base_path}")
    cd = profile_model(str(base_path), prompts, spec.profile_generate_tokens, num_workers=spec.profile_workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(cd) + "\n")
    return cd


def resolve_base(base: str, revision: str | None, root: Path, as_path: Path) -> tuple[Path, dict[str, Any]]:
    """(local folder, identity): a local folder is identified by the hash of its content, a hub
    id by the commit it resolves to."""
    if as_path.is_dir():
        return as_path.resolve(), {"content_sha256": content_hash(as_path, root / ".cache")}
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id=base, revision=resolve_hub_revision(base, revision) or revision))
    except Exception as err:  # not a folder, and the Hub cannot give it
        raise BuildError(f"base {base!r} is neither a local folder nor a downloadable hub model: {err}") from None
    return path, {"id": base, "revision": path.name}


def resolve_hub_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a hub model's `revision` (default: main) points to: asked of the hub, else read from
    the local Hugging Face cache (offline, HF_HUB_OFFLINE=1); None when neither knows it."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, constants, snapshot_download

    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().model_info(repo_id, revision=revision).sha
        except Exception as err:  # offline, no such repo, no access: the cache may still know
            log.info("hub model %s@%s not resolved online: %s", repo_id, revision or "main", err)
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not in the cache either
        return None


COMMIT = re.compile(r"[0-9a-f]{40}")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def default_hash_cache() -> Path:
    """Where content hashes of model folders outside an artifact root are cached (by size and mtime)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omk-ray"


def identifies(name: str) -> bool:
    """A file of a model folder that its content hash covers."""
    return name == "config.json" or name.endswith(WEIGHT_SUFFIXES) or name.endswith(".safetensors.index.json")


def combine_hashes(digests: dict[str, str]) -> str:
    """The content hash of a folder from its identifying files' hex sha256s, by file name."""
    digest = hashlib.sha256()
    for name in sorted(digests):
        digest.update(name.encode() + b"\0" + bytes.fromhex(digests[name]))
    return digest.hexdigest()


def content_hash(model_dir: Path, cache_dir: Path | None = None) -> str:
    """sha256 over config.json and the weight files (names and bytes), cached by size and mtime."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and identifies(p.name))
    stamp = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    cache = cache_dir / "content-hashes.json" if cache_dir else None
    key = str(model_dir.resolve())
    if cache and cache.is_file():
        known = json.loads(cache.read_text()).get(key)
        if known and known["files"] == stamp:
            return known["sha256"]
    digests = {}
    for p in files:
        with open(p, "rb") as f:
            digests[p.name] = hashlib.file_digest(f, "sha256").hexdigest()
    value = combine_hashes(digests)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache) + ".lock"):
            table = json.loads(cache.read_text()) if cache.is_file() else {}
            table = {k: v for k, v in table.items() if Path(k).is_dir()}  # forget folders that are gone
            table[key] = {"files": stamp, "sha256": value}
            write_text_atomic(cache, json.dumps(table, indent=1))
    return value




# -- Hugging Face Hub --------------------------------------------------------------------------


def pull_variant(hub_repo: str, fingerprint: str, dest: Path) -> bool:
    """Download `<fingerprint>/` of the hub repo into dest; False if the hub does not have it."""
    from huggingface_hub import snapshot_download

    staging = dest.parent / STAGING / f"pull-{fingerprint}-{uuid.uuid4().hex[:8]}"
    try:
        snapshot_download(repo_id=hub_repo, allow_patterns=[f"{fingerprint}/*"], local_dir=staging)
        got = staging / fingerprint
        if not (got / "config.json").is_file():
            return False
        os.rename(got, dest)
        return True
    except Exception as err:  # offline, no such repo, no access: build locally instead
        log.info("variant %s not pulled from %s: %s", fingerprint, hub_repo, err)
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def push_variant(hub_repo: str, path: Path, fingerprint: str) -> None:
    """Upload a built variant to `<fingerprint>/` of a private hub repo (created if missing)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_repo, private=True, exist_ok=True)
    api.upload_folder(repo_id=hub_repo, folder_path=str(path), path_in_repo=fingerprint,
                      commit_message=f"omk-ray variant {fingerprint}")


__all__ = [
    "BUILDER_VERSION", "BuildError", "BuildSpec", "ResolvedBuild", "content_hash", "default_hash_cache",
    "ensure_variant", "fingerprint_of", "parse_build", "pull_variant", "push_variant", "resolve_build",
    "resolve_hub_revision", "artifact_fingerprint",
]
