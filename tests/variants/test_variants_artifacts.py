"""Fingerprinted variants: built once under the artifact root, reused, never rebuilt."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from omk_ray.variants import artifacts
from omk_ray.variants.artifacts import BuildError, artifact_fingerprint, ensure_variant
from omk_ray.variants.check import check_variant
from omk_ray.variants.quantize import QuantizationUnavailable, quantization_available
from omk_ray.variants.surgery import PROVENANCE_NAME

DROP = {"0": [1, 4], "1": [0, 3]}


def cd_file(path):
    """8 experts, class means 5: math [.8 x 7, 2.4] (7 is a math specialist), code [1 x 6, 2, 0]."""
    math = [4, 4, 4, 4, 4, 4, 4, 12]
    code = [5, 5, 5, 5, 5, 5, 10, 0]
    groups = {name: {layer: [{"id": e, "wnorm": 0, "tc": tc} for e, tc in enumerate(values)] for layer in ("0", "1")}
              for name, values in (("math", math), ("code", code))}
    path.write_text(json.dumps({"metadata": {"num_layers": 2, "num_experts": 8}, "categories": groups}))
    return path


def test_builds_once_then_reuses(tiny_gemma4, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    path = ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP}, root)
    assert path.parent == root and path.name == artifact_fingerprint({"base": str(tiny_gemma4), "drop_map": DROP}, root)
    record = json.loads((path / PROVENANCE_NAME).read_text())
    assert record["fingerprint"] == path.name and record["base"]["content_sha256"]
    assert json.loads((path / "config.json").read_text())["num_experts"] == 6

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt an existing variant")

    monkeypatch.setattr("omk_ray.variants.surgery.prune_checkpoint", no_rebuild)
    assert ensure_variant({"base": str(tiny_gemma4), "drop_map": {"1": [3, 0], "0": [4, 1]}}, root) == path
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [path.name]


def test_fingerprint_follows_content_not_names(tiny_gemma4, tmp_path):
    root = tmp_path / "artifacts"
    copy = shutil.copytree(tiny_gemma4, tmp_path / "copy")
    fp = artifact_fingerprint({"base": str(tiny_gemma4), "drop_map": DROP}, root)
    assert artifact_fingerprint({"base": str(copy), "drop_map": DROP}, root) == fp
    assert artifact_fingerprint({"base": str(copy), "drop_map": {"0": [1, 5], "1": [0, 3]}}, root) != fp
    assert artifact_fingerprint({"base": str(copy), "drop_map": DROP, "quantization": "NVFP4A16"}, root) != fp
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert artifact_fingerprint({"base": str(copy), "drop_map": DROP}, root) != fp


def test_the_same_build_made_again_elsewhere_keeps_its_weights_identity(tiny_gemma4, tmp_path):
    """Built under two artifacts roots (another day, node or folder): the same variant, so the same
    weights identity and output fingerprint (its samples are reused); another drop map is another."""
    from omk_ray.config import VariantSpec
    from omk_ray.farm.planner import weights_identity
    from omk_ray.farm.artifact_store import manifest_of

    build = {"base": str(tiny_gemma4), "drop_map": DROP}
    here, there = ensure_variant(build, tmp_path / "a"), ensure_variant(build, tmp_path / "b")
    records = [json.loads((p / PROVENANCE_NAME).read_text()) for p in (here, there)]
    assert records[0]["base_path"] == records[1]["base_path"] and "created_at" in records[0]
    variant = VariantSpec(name="arm", model="unused", engine="transformers")
    identity = weights_identity(variant, str(here))
    assert identity == weights_identity(variant, str(there))
    assert set(identity) == {"content_sha256", PROVENANCE_NAME}
    record = dict(records[0], created_at="2020-01-01T00:00:00Z", base_path="/elsewhere", omk_ray_version="9")
    (there / PROVENANCE_NAME).write_text(json.dumps(record))
    assert weights_identity(variant, str(there)) == identity  # circumstances only
    assert manifest_of(there)[PROVENANCE_NAME]["identity"] == identity[PROVENANCE_NAME]  # what other nodes see
    (there / PROVENANCE_NAME).write_text(json.dumps(dict(record, drop_map={"0": [4], "1": [3]})))
    assert weights_identity(variant, str(there))[PROVENANCE_NAME] != identity[PROVENANCE_NAME]


def test_strategies_from_a_scores_file_and_relative_paths(tiny_gemma4, tmp_path):
    root = tmp_path / "artifacts"
    cd_file(tmp_path / "cd.json")
    spec = {"base": str(tiny_gemma4), "scores": "cd.json", "drop": 2}
    max_path = ensure_variant({**spec, "strategy": "max"}, root, base_dir=tmp_path)
    geo_path = ensure_variant({**spec, "strategy": "geomean"}, root, base_dir=tmp_path)
    assert max_path != geo_path
    # max: [1 x 6, 2, 2.4] -> the tie 0..5 loses its two highest ids; geomean: 7 is ~0 -> [5, 7]
    assert json.loads((max_path / PROVENANCE_NAME).read_text())["drop_map"] == {"0": [4, 5], "1": [4, 5]}
    assert json.loads((geo_path / PROVENANCE_NAME).read_text())["drop_map"] == {"0": [5, 7], "1": [5, 7]}
    # pooled sums [9 x 6, 14, 12] pick the same experts as max: the same variant, reused
    assert ensure_variant({**spec, "strategy": "pooled"}, root, base_dir=tmp_path) == max_path


def test_profile_prompts_are_profiled_once_and_cached(tiny_gemma4, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [
        {"class": "math", "prompt": "2+2?"}, {"class": "code", "prompt": "print(1)"},
    ]))
    spec = {"base": str(tiny_gemma4), "profile_prompts": str(prompts), "target": 6, "strategy": "max"}
    path = ensure_variant(spec, root)
    assert len(list((root / "cd").glob("*.json"))) == 1
    monkeypatch.setattr("omk_ray.variants.profile.profile_model", lambda *a, **k: pytest.fail("profiled twice"))
    assert artifact_fingerprint({**spec, "strategy": "mean"}, root)  # from the cached scores
    assert ensure_variant(spec, root) == path


def test_concurrent_builders_build_once(tiny_gemma4, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    calls = []
    real = artifacts._build

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(artifacts, "_build", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP}, root)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3 and calls == [1]


def test_unreachable_hub_falls_back_to_a_local_build(tiny_gemma4, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP, "hub_repo": "someone/variants"}, tmp_path)
    assert (path / "model.safetensors").is_file()
    assert not (tmp_path / ".staging").exists() or not any((tmp_path / ".staging").iterdir())


def test_nvfp4a16_build_prunes_then_quantizes_and_is_checked(tiny_gemma4, tmp_path):
    path = ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP, "quantization": "nvfp4a16"}, tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["num_experts"] == 6 and config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    record = json.loads((path / PROVENANCE_NAME).read_text())
    assert record["build"]["quantization"] == "NVFP4A16" and record["base_provenance"]["drop_map"] == DROP
    assert check_variant(path).ok
    assert ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP, "quantization": "NVFP4A16"}, tmp_path) == path
    staging = tmp_path / ".staging"
    assert not (staging.exists() and any(staging.iterdir()))


@pytest.mark.skipif(quantization_available(), reason="llm-compressor is installed here")
def test_build_needing_llmcompressor_fails_clearly_before_pruning(tiny_gemma4, tmp_path):
    with pytest.raises(QuantizationUnavailable, match="pip install 'omk-ray\\[quant\\]'"):
        ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP, "quantization": "W4A16"}, tmp_path)
    visible = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    staging = tmp_path / ".staging"
    assert visible == [] and not (staging.exists() and any(staging.iterdir()))
    with pytest.raises(BuildError, match="quantization: .*unknown scheme 'NVFP5'"):
        ensure_variant({"base": str(tiny_gemma4), "drop_map": DROP, "quantization": "NVFP5"}, tmp_path)


@pytest.mark.parametrize("block, message", [
    ({"drop_map": DROP}, "base: Field required"),
    ({"base": "x", "drop_map": DROP, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"base": "x", "drop_map": DROP, "scores": "cd.json"}, "give one source"),
    ({"base": "x"}, "nothing to build"),
    ({"base": "x", "scores": "cd.json"}, "exactly one of `target`"),
    ({"base": "x", "scores": "cd.json", "drop": 2, "strategy": "median"}, "unknown strategy"),
    ({"base": "x", "drop_map": DROP, "push": True}, "push: true needs hub_repo"),
])
def test_bad_build_blocks(block, message, tmp_path):
    with pytest.raises(BuildError, match=message):
        ensure_variant(block, tmp_path)
