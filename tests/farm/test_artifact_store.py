"""The artifact store (farm/artifact_store.py) and the sizing of build tasks (farm/builds.py).
The multi-node run, each node with a disk of its own: tests/jobs/test_cluster_disks.py."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from omk_ray.farm import artifact_store
from omk_ray.farm.artifact_store import ArtifactFetchError, Published, fetch_into, manifest_of
from omk_ray.farm.builds import GiB, STREAMING_MEMORY, build_resources, build_steps
from omk_ray.variants.artifacts import combine_hashes, content_hash, identifies, parse_build


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def published_folder(tmp_path: Path) -> Published:
    folder = tmp_path / "built" / "fp123"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 1000)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return Published("fp123", str(folder), "node-a", manifest_of(folder))


def reader(published: Published, chunk: int = 1000):
    def read(name):
        data = (Path(published.path) / name).read_bytes()
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]
    return read


@pytest.fixture
def faults(monkeypatch):
    """The fault injector set to corrupt the first `n` chunks fetched by this process."""
    def set_faults(n: int):
        monkeypatch.setenv(artifact_store.FAULT_ENV, str(n))
        monkeypatch.setattr(artifact_store, "_faults_done", 0)
    return set_faults


def test_manifest_holds_every_file_with_size_and_sha256(tmp_path):
    pub = published_folder(tmp_path)
    folder = Path(pub.path)
    assert sorted(pub.manifest) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert pub.manifest["model.safetensors"] == {"size": 256_000, "sha256": sha(folder / "model.safetensors")}
    assert pub.size == 256_000 + 8 + 2


def test_a_fetch_is_verified_and_a_corrupted_chunk_fetched_again(tmp_path, faults):
    pub = published_folder(tmp_path)
    faults(1)  # the first chunk of the first file (config.json, sorted first) arrives damaged
    refused = fetch_into(tmp_path / "cache", pub, reader(pub))
    assert refused == ["config.json"]
    copy = tmp_path / "cache" / "fp123"
    assert manifest_of(copy) == pub.manifest
    assert (copy / "model.safetensors").read_bytes() == (Path(pub.path) / "model.safetensors").read_bytes()
    assert not list((tmp_path / "cache" / artifact_store.STAGING).iterdir())  # nothing left aside


def test_a_file_that_never_arrives_intact_is_refused_by_name(tmp_path, faults):
    pub = published_folder(tmp_path)
    faults(1000)
    with pytest.raises(ArtifactFetchError, match=r"variant fp123: config.json fetched 3 times from node node-a"):
        fetch_into(tmp_path / "cache", pub, reader(pub))
    assert not (tmp_path / "cache" / "fp123").exists()
    assert not list((tmp_path / "cache" / artifact_store.STAGING).iterdir())


def test_a_fetch_that_cannot_fit_the_cache_is_refused_before_it_starts(tmp_path):
    pub = Published("fp9", str(tmp_path), "node-a", {"huge.safetensors": {"size": 1 << 60, "sha256": "0" * 64}})
    (tmp_path / "cache").mkdir()
    with pytest.raises(ArtifactFetchError, match=r"variant fp9 needs 1073741824.0 GiB, the cache .* GiB free "
                                                 r"\(set OMK_RAY_ARTIFACT_CACHE to a bigger disk\)"):
        fetch_into(tmp_path / "cache", pub, lambda name: iter([]))


def test_what_a_killed_fetch_left_aside_is_removed(tmp_path, faults):
    pub = published_folder(tmp_path)
    faults(0)
    left = tmp_path / "cache" / artifact_store.STAGING / "fp123-0dead000"
    left.mkdir(parents=True)
    (left / "config.json").write_text("half")
    assert fetch_into(tmp_path / "cache", pub, reader(pub)) == []
    assert not left.exists() and manifest_of(tmp_path / "cache" / "fp123") == pub.manifest


def test_a_truncated_transfer_is_refused(tmp_path, faults):
    pub = published_folder(tmp_path)
    faults(0)
    short = lambda name: iter([(Path(pub.path) / name).read_bytes()[:-1]])  # noqa: E731
    with pytest.raises(ArtifactFetchError, match="config.json"):
        fetch_into(tmp_path / "cache", pub, short)


def test_content_identity_from_the_manifest_equals_the_folders(tiny_gemma4):
    """The driver identifies a variant built on another node by its manifest: the same hash the
    build node would compute from the files (planner.weights_identity)."""
    manifest = manifest_of(tiny_gemma4)
    from_manifest = combine_hashes({n: e["sha256"] for n, e in manifest.items() if "/" not in n and identifies(n)})
    assert from_manifest == content_hash(tiny_gemma4)


def test_after_the_run_the_driver_identifies_a_variant_it_never_saw_by_its_sidecar(tmp_path, tiny_gemma4):
    """`omk-ray status` on the head after a job whose builds ran on GPU workers: no store is left,
    the folder is not on this disk, the manifest the run kept beside the artifact root is."""
    from omk_ray.config import parse_grid
    from omk_ray.farm.artifact_store import sidecar
    from omk_ray.farm.planner import weights_identity

    elsewhere = tmp_path / "artifacts" / "fp777"  # never created here
    sidecar(elsewhere).parent.mkdir(parents=True)
    sidecar(elsewhere).write_text(json.dumps(manifest_of(tiny_gemma4)))
    variant = parse_grid({"variants": [{"name": "v", "model": str(elsewhere), "engine": "transformers"}],
                          "benches": [{"name": "b", "source": "b.jsonl"}]}).variants[0]
    assert weights_identity(variant, str(elsewhere)) == {"content_sha256": content_hash(tiny_gemma4)}


# -- build tasks sized by the checkpoint -----------------------------------------------------------

CPU_NODES = [{"CPU": 8, "memory": 64 * GiB}, {"CPU": 4, "memory": 16 * GiB}]
GPU_NODES = [{"CPU": 8, "memory": 64 * GiB}, {"CPU": 16, "GPU": 4, "memory": 128 * GiB}]


def test_profiling_and_quantizing_ask_for_a_gpu_when_the_cluster_has_one():
    assert build_resources(52 * GiB, ["profile", "prune"], GPU_NODES) == {"CPU": 1, "GPU": 1}
    assert build_resources(52 * GiB, ["prune", "quantize"], GPU_NODES) == {"CPU": 1, "GPU": 1}
    assert build_resources(52 * GiB, ["prune"], GPU_NODES) == {"CPU": 1, "memory": STREAMING_MEMORY}


def test_without_gpus_a_build_asks_for_a_node_where_its_weights_fit():
    # profiling loads the whole model: its size and a margin
    assert build_resources(40 * GiB, ["profile", "prune"], CPU_NODES) == {"CPU": 1, "memory": 48 * GiB + GiB}
    # streaming steps hold a few tensors: a small model asks for its size, a large one for the streaming cap
    assert build_resources(GiB, ["prune", "quantize"], CPU_NODES) == {"CPU": 1, "memory": 2 * GiB}
    assert build_resources(52 * GiB, ["prune", "quantize"], CPU_NODES) == {"CPU": 1, "memory": STREAMING_MEMORY}
    # more than any node has: the largest node
    assert build_resources(100 * GiB, ["profile"], CPU_NODES) == {"CPU": 1, "memory": 64 * GiB}
    # size unknown (an unreachable hub model): the defaults
    assert build_resources(None, ["profile"], CPU_NODES) == {"CPU": 1}


def test_build_steps_of_a_block():
    assert build_steps(parse_build({"base": "m", "drop_map": {"0": [1]}})) == ["prune"]
    assert build_steps(parse_build({"base": "m", "drop_map": {"0": [1]}, "quantization": "nvfp4a16"})) == \
        ["prune", "quantize"]
    assert build_steps(parse_build({"base": "m", "profile_prompts": "default", "target": 6})) == ["profile", "prune"]
    assert build_steps(parse_build({"base": "m", "quantization": "gguf"})) == ["gguf"]
    assert build_resources(GiB, ["gguf"], GPU_NODES) == {"CPU": 1, "memory": 2 * GiB}
    # sharded profiling runs in tasks of its own, each asking for its GPU: the build task must not hold one
    assert build_steps(parse_build({"base": "m", "profile_prompts": "default", "target": 6,
                                    "profile_workers": 2})) == ["prune"]


# -- publishing on a one-node Ray -----------------------------------------------------------------


def test_a_build_is_published_and_its_own_node_uses_it_in_place(tmp_path, tiny_gemma4, local_ray):
    import ray

    from omk_ray.config import parse_grid
    from omk_ray.farm.artifact_store import find_published, local_copy
    from omk_ray.farm.builds import build_variants

    grid = parse_grid({"variants": [{"name": "arm", "engine": "transformers",
                                     "build": {"base": str(tiny_gemma4), "drop_map": {"0": [1], "1": [2]}}}],
                       "benches": [{"name": "b", "source": "b.jsonl"}]})
    path = build_variants(grid, tmp_path / "artifacts")["arm"]
    published = find_published(path)
    assert published.fingerprint == Path(path).name and published.manifest == manifest_of(path)
    assert published.node_id == ray.get_runtime_context().get_node_id()
    assert local_copy(path) == (path, {"fingerprint": published.fingerprint, "manifest": published.manifest_hash[:16],
                                       "built_on": published.node_id, "source": "built here"})
    assert local_copy(str(tiny_gemma4)) == (str(tiny_gemma4), None)  # never published: as it is
    assert json.loads((tmp_path / "artifacts" / f"{published.fingerprint}.manifest.json").read_text()) == \
        published.manifest
    shutil.rmtree(tmp_path / "artifacts")


@pytest.fixture
def two_nodes(tmp_path):
    """Two Ray nodes of this machine (so both see one disk), each with a cache of its own."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"a": 1}, "env_vars": {artifact_store.CACHE_ENV: str(tmp_path / "cache-a")}})
    cluster.add_node(num_cpus=1, resources={"b": 1}, env_vars={artifact_store.CACHE_ENV: str(tmp_path / "cache-b")})
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    nodes = {("a" if n["Resources"].get("a") else "b"): n["NodeID"] for n in ray.nodes() if n["Alive"]}
    yield nodes
    ray.shutdown()
    cluster.shutdown()


def copy_on_b(path: str):
    import ray

    from omk_ray.farm.artifact_store import local_copy

    return ray.get(ray.remote(local_copy).options(resources={"b": 1}).remote(path))


@pytest.mark.slow
def test_a_shared_path_is_used_in_place_and_a_changed_folder_refused(tmp_path, two_nodes):
    from omk_ray.farm.artifact_store import publish

    pub = published_folder(tmp_path)
    published = publish(pub.path, two_nodes["a"], "fp123")
    assert published.manifest == pub.manifest and published.node_id == two_nodes["a"]

    # node b sees the folder at its path: hashed once against the manifest, then used where it is
    path, report = copy_on_b(pub.path)
    assert (path, report["source"]) == (pub.path, "shared path")
    marker = tmp_path / "cache-b" / "fp123.verified.json"
    assert marker.is_file() and not (tmp_path / "cache-b" / "fp123").exists()
    assert copy_on_b(pub.path) == (pub.path, report)  # the marker: not hashed again

    # the folder changes after it was published (same size): the path no longer matches, and
    # what the store serves does not either; the fetch is refused by name after 3 tries
    marker.unlink()
    weights = Path(pub.path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[::-1])
    with pytest.raises(Exception, match=r"variant fp123: model.safetensors fetched 3 times from node"):
        copy_on_b(pub.path)
    assert not (tmp_path / "cache-b" / "fp123").exists() and not marker.exists()
