"""Variants with a `build:` block are built (or reused by fingerprint) as Ray tasks before the run,
each on a node where its weights fit, then published to every node (farm/artifact_store.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray

from omk_ray.config import GridConfig
from omk_ray.files import write_text_atomic

GiB = 1 << 30
STREAMING_MEMORY = 4 * GiB  # pruning and NVFP4 quantization hold a few tensors at a time, not the model
log = logging.getLogger(__name__)


class BuildFailed(RuntimeError):
    """One or more arms could not be built; the arms that were built stay in the artifact root."""


def artifact_root(grid: GridConfig, results_root: str | Path) -> Path:
    return Path(grid.artifacts) if grid.artifacts else Path(results_root) / "artifacts"


def build_variants(grid: GridConfig, root: Path, variants: list[str] | None = None) -> dict[str, str]:
    """name -> checkpoint folder for every chosen variant with a build block (Ray must be connected).
    Each folder is published: an engine on another node gets a verified copy of it."""
    from omk_ray.farm.artifact_store import publish, sidecar
    from omk_ray.variants.artifacts import parse_build

    wanted = [v for v in grid.variants if v.build and (variants is None or v.name in variants)]
    if not wanted:
        return {}
    from ray.util.queue import Queue

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    lines = Queue(actor_options={"num_cpus": 0})  # the build tasks' progress lines, printed here as they come
    refs = {}
    for v in wanted:
        spec = parse_build(v.build)
        options = grid.farm.build_resources or build_resources(checkpoint_bytes(spec.base, spec.revision),
                                                               build_steps(spec), nodes)
        log.info("variant %s: build task asks for %s", v.name, options)
        # The config's local paths were made absolute when it was loaded (config.LOCAL_PATHS): no base folder here.
        block = v.build.model_dump(mode="json", exclude_unset=True)
        refs[v.name] = _build_task.options(**_ray_options(options)).remote(block, str(root), v.name, lines)
    _print_lines_until_done(list(refs.values()), lines)
    paths, errors = {}, []
    for name, ref in refs.items():
        try:
            path, node_id = ray.get(ref)
            built = Path(path).parent == Path(root)
            published = publish(path, node_id, Path(path).name if built else None)
            if built:  # the driver identifies the variant later even where it cannot see its folder
                sidecar(path).parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(sidecar(path), json.dumps(published.manifest, indent=1, sort_keys=True))
            paths[name] = path
        except Exception as err:  # a bad drop map, a missing tensor, an unreachable base
            cause = getattr(err, "cause", None) or err
            errors.append(f"variant {name!r}: {type(cause).__name__}: {cause}")
    if errors:
        raise BuildFailed("could not build:\n  " + "\n  ".join(errors))
    return paths


def _print_lines_until_done(refs: list, lines) -> None:
    """Print the builds' progress lines on the driver's stdout (workers' output is not forwarded) until all end."""
    while True:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        while not lines.empty():
            print(lines.get(), flush=True)
        if len(done) == len(refs):
            break
    ray.kill(lines.actor)


class _QueueStream:
    """A text stream whose lines go into a Ray queue."""

    def __init__(self, queue):
        self.queue, self.pending = queue, ""

    def write(self, text: str) -> None:
        self.pending += text
        *whole, self.pending = self.pending.split("\n")
        for line in whole:
            self.queue.put(line)

    def flush(self) -> None:
        pass


@ray.remote(max_retries=0)
def _build_task(build: dict, root: str, name: str = "variant", lines=None) -> tuple[str, str]:
    """(the variant's folder, the node holding it); its steps are `[omk-ray] build NAME: ...` lines put in `lines`."""
    from omk_ray.console import step_lines
    from omk_ray.variants.artifacts import ensure_variant

    with step_lines(f"build {name}", stream=_QueueStream(lines) if lines is not None else None):
        return str(ensure_variant(build, root)), ray.get_runtime_context().get_node_id()


def build_steps(spec) -> list[str]:
    """What a build block makes its task do: profile, prune, quantize (or gguf)."""
    # profiling sharded over several workers runs in tasks of their own (variants/profile.py)
    profile = getattr(spec, "profile_prompts", None)  # each kind of build has its own keys (variants/spec.py)
    steps = ["profile"] if profile and spec.profile_workers == 1 else []
    if spec.kind != "quantize-only":
        steps.append("prune")
    if spec.quantization:
        steps.append("gguf" if spec.quantization == "gguf" else "quantize")  # llama.cpp's tools run on the CPU
    return steps


def build_resources(checkpoint_bytes: int | None, steps: list[str], nodes: list[dict[str, float]]) -> dict[str, float]:
    """The Ray resources of one build task, by Ray's resource names (CPU, GPU, memory in bytes):
    a GPU for profiling and quantization when a node has one; else, for profiling (the whole
    model in memory) the checkpoint's size and a margin, for streaming steps at most
    STREAMING_MEMORY; never more memory than the largest node has."""
    request: dict[str, float] = {"CPU": 1}
    if any(s in ("profile", "quantize") for s in steps) and any(n.get("GPU", 0) >= 1 for n in nodes):
        request["GPU"] = 1
        return request
    if checkpoint_bytes is None or not steps:
        return request
    need = int(checkpoint_bytes * 1.2) + GiB if "profile" in steps else min(checkpoint_bytes + GiB, STREAMING_MEMORY)
    largest = max((n.get("memory", 0) for n in nodes), default=0)
    if largest and need > largest:
        log.warning("a build needs about %.1f GiB; the largest node has %.1f GiB: asking for that node",
                    need / GiB, largest / GiB)
        need = int(largest)
    request["memory"] = need
    return request


def checkpoint_bytes(base: str, revision: str | None = None) -> int | None:
    """The size of a checkpoint's weights: a local folder's, else the hub's listing; None when unknown."""
    weights = (".safetensors", ".bin")
    folder = Path(base).expanduser()
    if folder.is_dir():
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith(weights))
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(base, revision=revision, files_metadata=True)
        return sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(weights)) or None
    except Exception as err:  # offline, no such repo, no access: the build asks for the defaults
        log.info("size of %s not known: %s", base, err)
        return None


def _ray_options(resources: dict[str, float]) -> dict:
    """Ray task options from resource names (CPU, GPU, memory and custom resources)."""
    rest = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    options: dict = {"num_cpus": resources.get("CPU", 0), "num_gpus": resources.get("GPU", 0)}
    if "memory" in resources:
        options["memory"] = resources["memory"]
    if rest:
        options["resources"] = rest
    return options
