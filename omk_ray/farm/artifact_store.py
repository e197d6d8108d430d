"""The artifact store: a built variant reaches an engine on any node, without a shared filesystem.

A build writes `<artifact root>/<fingerprint>/` on whichever node ran it. The driver then
publishes that folder (`publish`): an `ArtifactStore` actor on the build's node (one per node,
named, owned by the run's driver, holding no CPU) hashes every file once into a manifest
{relative path: {size, sha256}} and from then on serves the files' bytes, CHUNK bytes at a
time, to whichever node asks. Before an engine starts, `local_copy(path)` (called by the
engine actor) turns the path the driver gave it into a folder on the engine's own node:

- built on this node: the path itself;
- the path exists here (a shared filesystem): the path itself, once its files match the
  manifest (hashed once per node, remembered in the cache);
- otherwise: fetched into the node's cache `<cache>/<fingerprint>/` (`OMK_RAY_ARTIFACT_CACHE`,
  default `~/.cache/omk-ray/artifacts`), a few chunks in flight at a time, written aside and
  renamed into place; every file's sha256 and size are checked against the manifest and a file
  that does not match is fetched again, up to FETCH_TRIES times, then refused with its name.
  Later engines on the node reuse the verified copy.

A path that no store published (a hub id, a folder the grid names) is returned as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from omk_ray.config import stable_hash
from omk_ray.farm import NAMESPACE
from omk_ray.files import write_text_atomic
from omk_ray.variants.checkpoint import PROVENANCE_NAME, provenance_identity

CHUNK = 64 << 20  # bytes per transfer: what one fetching process holds at a time, times WINDOW
WINDOW = 4  # chunks in flight per fetch
FETCH_TRIES = 3  # fetches of one file before its variant is refused
CACHE_ENV = "OMK_RAY_ARTIFACT_CACHE"
FAULT_ENV = "OMK_RAY_FAULT_CORRUPT_CHUNKS"  # fault injector for tests: flip a byte in the first N chunks fetched
STORE_PREFIX = "omk-ray-artifacts:"  # + node id + driver's job id: a store actor
STAGING = ".staging"
log = logging.getLogger(__name__)

Manifest = dict[str, dict]  # relative path -> {"size": bytes, "sha256": hex}


class ArtifactFetchError(RuntimeError):
    """A published variant could not be copied to this node intact."""


@dataclass(frozen=True)
class Published:
    fingerprint: str
    path: str  # the folder on the node that built it
    node_id: str
    manifest: Manifest = field(repr=False)
    store: str = ""  # the name of the store actor serving it

    @property
    def manifest_hash(self) -> str:
        return stable_hash(self.manifest, 64)

    @property
    def size(self) -> int:
        return sum(e["size"] for e in self.manifest.values())


def cache_root() -> Path:
    """This node's cache of fetched variants."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omk-ray" / "artifacts"
    return Path(os.environ.get(CACHE_ENV) or default)


def manifest_of(folder: str | Path, only: Manifest | None = None) -> Manifest:
    """{relative path: {size, sha256}} of every file under `folder` (or of the files `only` names;
    a file missing there is left out)."""
    folder = Path(folder)
    names = sorted(only) if only is not None else sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    manifest = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            manifest[name] = {"size": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
        if name == PROVENANCE_NAME:  # what a node that cannot see the folder identifies the variant by (planner.py)
            manifest[name]["identity"] = provenance_identity(path.read_bytes())
    return manifest


class ArtifactStore:
    """The store's actor on one node: publishes folders of that node and serves their bytes."""

    def __init__(self, name: str = ""):
        self.name = name
        self.published: dict[str, Published] = {}  # by folder

    def publish(self, path: str, fingerprint: str | None = None) -> Published:
        import ray

        if path not in self.published:
            manifest = manifest_of(path)
            if not manifest:
                raise ArtifactFetchError(f"cannot publish {path}: no files there")
            fingerprint = fingerprint or f"content-{stable_hash(manifest)}"
            self.published[path] = Published(fingerprint, path, ray.get_runtime_context().get_node_id(), manifest,
                                             self.name)
        return self.published[path]

    def find(self, path: str) -> Published | None:
        return self.published.get(path)

    def read(self, path: str, name: str, offset: int) -> bytes:
        """Up to CHUNK bytes of a published file from `offset`."""
        published = self.published.get(path)
        if published is None or name not in published.manifest:
            raise ArtifactFetchError(f"{name!r} of {path} is not published here")
        with open(Path(path) / name, "rb") as f:
            f.seek(offset)
            return f.read(CHUNK)


_stores: dict[str, object] = {}  # store name -> actor handle, held by the driver for the run's life


def publish(path: str, node_id: str, fingerprint: str | None = None) -> Published:
    """Publish a folder of node `node_id` (driver side; Ray must be connected)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


    # one store per node and driver: a store dies with the driver that owns it, not with another run's
    name = f"{STORE_PREFIX}{node_id}:{ray.get_runtime_context().get_job_id()}"
    if name not in _stores:
        _stores[name] = ray.remote(ArtifactStore).options(
            name=name, namespace=NAMESPACE, get_if_exists=True, num_cpus=0, max_concurrency=8,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(name)
    return ray.get(_stores[name].publish.remote(path, fingerprint))


def find_published(path: str) -> Published | None:
    """What a store published at `path` (None: no store did, or Ray is not connected)."""
    import ray


    if not ray.is_initialized():
        return None
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] != NAMESPACE or not actor["name"].startswith(STORE_PREFIX):
            continue
        try:
            found = ray.get(ray.get_actor(actor["name"], namespace=NAMESPACE).find.remote(path))
        except (ValueError, ray.exceptions.RayActorError):  # its node or driver is gone
            continue
        if found is not None:
            return found
    return None


def sidecar(path: str | Path) -> Path:
    """Where the driver keeps a built folder's manifest on its own disk: `<folder>.manifest.json`."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def manifest_at(path: str) -> Manifest | None:
    """The manifest published at `path`: from a store of this run, else from the sidecar a run left
    on this machine (`omk-ray status` after the run); None when neither knows it."""
    published = find_published(path)
    if published is not None:
        return published.manifest
    side = sidecar(path)
    return json.loads(side.read_text()) if side.is_file() else None


def local_copy(model_path: str) -> tuple[str, dict | None]:
    """(a folder on this node holding the variant published at `model_path`, how it got there);
    `model_path` itself and None when nothing was published there."""
    import ray


    published = find_published(model_path)
    if published is None:
        return model_path, None
    report = {"fingerprint": published.fingerprint, "manifest": published.manifest_hash[:16],
              "built_on": published.node_id}
    if published.node_id == ray.get_runtime_context().get_node_id():
        return model_path, {**report, "source": "built here"}
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".{published.fingerprint}.lock")):  # engines of one node fetch once
        shared, cached = Path(model_path), cache / published.fingerprint
        for folder, source in ((shared, "shared path"), (cached, "cache")):
            if _verified(cache, published, folder):
                return str(folder), {**report, "source": source}
        if shared.is_dir() and manifest_of(shared, published.manifest) == published.manifest:
            _mark_verified(cache, published, shared)
            return str(shared), {**report, "source": "shared path"}
        store = ray.get_actor(published.store, namespace=NAMESPACE)
        refused = fetch_into(cache, published, lambda name: _chunks(store, published, name))
        _mark_verified(cache, published, cached)
        return str(cached), {**report, "source": "fetched", "bytes": published.size, "refused": refused}


def fetch_into(cache: Path, published: Published, read: Callable[[str], Iterator[bytes]],
               tries: int = FETCH_TRIES) -> list[str]:
    """Write every file of `published` (`read(name)` yields its chunks) to `cache/<fingerprint>/`,
    each checked against the manifest; the names of the fetches refused, one per refusal. The
    caller holds the fingerprint's lock: what an earlier, killed fetch left aside is removed."""
    dest = cache / published.fingerprint
    cache.mkdir(parents=True, exist_ok=True)
    for left in (cache / STAGING).glob(f"{published.fingerprint}-*"):
        shutil.rmtree(left, ignore_errors=True)
    free = shutil.disk_usage(cache).free
    if free < published.size:
        raise ArtifactFetchError(f"variant {published.fingerprint} needs {published.size / 2**30:.1f} GiB, the cache "
                                 f"{cache} has {free / 2**30:.1f} GiB free (set {CACHE_ENV} to a bigger disk)")
    staging = cache / STAGING / f"{published.fingerprint}-{uuid.uuid4().hex[:8]}"
    refused: list[str] = []
    try:
        for name, want in sorted(published.manifest.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(tries):
                got = _write(target, read(name))
                if (got["size"], got["sha256"]) == (want["size"], want["sha256"]):
                    break
                refused.append(name)
                log.warning("variant %s: %s fetched with sha256 %s (%d bytes), manifest says %s (%d bytes): "
                            "fetching it again", published.fingerprint, name, got["sha256"][:12], got["size"],
                            want["sha256"][:12], want["size"])
            else:
                raise ArtifactFetchError(
                    f"variant {published.fingerprint}: {name} fetched {tries} times from node {published.node_id[:12]}, "
                    f"never with the sha256 of its manifest ({want['sha256'][:12]}…, {want['size']} bytes)")
        shutil.rmtree(dest, ignore_errors=True)  # a copy that no longer matched
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return refused


def _write(target: Path, chunks: Iterator[bytes]) -> dict:
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as f:
        for chunk in chunks:
            chunk = _fault(chunk)
            digest.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _chunks(store, published: Published, name: str) -> Iterator[bytes]:
    """A published file's bytes from its node, WINDOW chunks in flight."""
    import ray

    size = published.manifest[name]["size"]
    offsets = iter(range(0, size, CHUNK))
    pending = [store.read.remote(published.path, name, o) for o, _ in zip(offsets, range(WINDOW))]
    while pending:
        chunk = ray.get(pending.pop(0))
        nxt = next(offsets, None)
        if nxt is not None:
            pending.append(store.read.remote(published.path, name, nxt))
        yield chunk


_faults_done = 0


def _fault(chunk: bytes) -> bytes:
    """Fault injector (`OMK_RAY_FAULT_CORRUPT_CHUNKS=N`): the first N chunks this process fetches
    arrive with their first byte flipped, as a bad transfer would."""
    global _faults_done
    if not chunk or _faults_done >= int(os.environ.get(FAULT_ENV) or 0):
        return chunk
    _faults_done += 1
    return bytes([chunk[0] ^ 0xFF]) + chunk[1:]


def _marker(cache: Path, published: Published) -> Path:
    return cache / f"{published.fingerprint}.verified.json"


def _verified(cache: Path, published: Published, folder: Path) -> bool:
    """`folder` was checked against this manifest on this node, and its files still have their sizes."""
    marker = _marker(cache, published)
    if not marker.is_file() or not folder.is_dir():
        return False
    record = json.loads(marker.read_text())
    if record != {"manifest": published.manifest_hash, "folder": str(folder)}:
        return False
    return all((folder / n).is_file() and (folder / n).stat().st_size == e["size"] for n, e in published.manifest.items())


def _mark_verified(cache: Path, published: Published, folder: Path) -> None:
    write_text_atomic(_marker(cache, published), json.dumps({"manifest": published.manifest_hash, "folder": str(folder)}))
