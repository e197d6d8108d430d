"""The variant commands end to end on a tiny Gemma 4: profile -> dropmap -> prune, and build-variant."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from omk_ray.variants.commands import register
from omk_ray.variants.quantize import quantization_available


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, [str(a) for a in args])

    return run


def test_profile_dropmap_prune(cli, tiny_gemma4, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [
        {"class": "math", "prompt": "What is 3+4?"},
        {"class": "code", "prompt": "for i in range(3): print(i)"},
        {"class": "science", "subclass": "chemistry", "prompt": "NaCl is table salt."},
        {"class": "science", "subclass": "physics", "prompt": "E = m c^2"},
    ]))
    cd = tmp_path / "cd.json"
    result = cli("profile", "--model", tiny_gemma4, "--prompts", prompts, "--out", cd, "--generate-tokens", 2)
    assert result.exit_code == 0, result.output
    assert set(json.loads(cd.read_text())["categories"]) >= {"science/chemistry", "science/physics"}

    result = cli("dropmap", "--cd", cd, "--strategy", "geomean", "--target", 6, "--out", tmp_path / "geo.json")
    assert result.exit_code == 0, result.output
    result = cli("dropmap", "--cd", cd, "--strategy", "max", "--target", 6, "--protect-top", 2, "--split", "science",
                 "--out", tmp_path / "max.json", "--summary", tmp_path / "summary.json", "--compare", tmp_path / "geo.json")
    assert result.exit_code == 0, result.output
    assert "overlap with the other map" in result.output
    drop_map = json.loads((tmp_path / "max.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(drop_map) == {"0", "1"} and {len(v) for v in drop_map.values()} == {2}
    assert summary["params"]["classes"] == {"math": ["math"], "code": ["code"], "science/chemistry": ["science/chemistry"],
                                            "science/physics": ["science/physics"]}
    assert all(len(p) >= 2 for p in summary["protected"].values()) and "compare" in summary

    out = tmp_path / "pruned"
    result = cli("prune", "--model", tiny_gemma4, "--drop-map", tmp_path / "max.json", "--out", out,
                 "--summary", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["num_experts"] == 6
    assert json.loads((out / "omk_ray_provenance.json").read_text())["strategy"]["strategy"] == "max"

    # refusals: an existing output, an existing drop map, a drop map for another model
    assert cli("prune", "--model", tiny_gemma4, "--drop-map", tmp_path / "max.json", "--out", out).exit_code == 2
    again = cli("dropmap", "--cd", cd, "--target", 6, "--out", tmp_path / "max.json")
    assert again.exit_code == 2 and "--force" in again.output
    (tmp_path / "bad.json").write_text(json.dumps({"0": [1, 2], "1": [3]}))
    bad = cli("prune", "--model", tiny_gemma4, "--drop-map", tmp_path / "bad.json", "--out", tmp_path / "nope")
    assert bad.exit_code == 2 and "same number of experts" in bad.output and not (tmp_path / "nope").exists()
    wrong = cli("dropmap", "--cd", cd, "--target", 6, "--weight", "math", "--out", tmp_path / "w.json")
    assert wrong.exit_code == 2 and "NAME=NUMBER" in wrong.output


def test_build_variant_and_quantize_commands(cli, tiny_gemma4, tmp_path):
    spec = tmp_path / "build.yaml"
    spec.write_text(f"build:\n  base: {tiny_gemma4}\n  drop_map: {{'0': [1], '1': [2]}}\n")
    first = cli("build-variant", "--spec", spec, "--artifact-root", tmp_path / "artifacts")
    assert first.exit_code == 0, first.output
    path = first.output.strip().splitlines()[-1]
    assert json.loads((tmp_path / "artifacts" / path.split("/")[-1] / "config.json").read_text())["num_experts"] == 7
    assert cli("build-variant", "--spec", spec, "--artifact-root", tmp_path / "artifacts").output.strip() == path
    quantized = cli("quantize", "--model", path, "--out", tmp_path / "q", "--max-shard-size", "100KB")
    assert quantized.exit_code == 0, quantized.output
    assert len(list((tmp_path / "q").glob("model-*-of-*.safetensors"))) > 1
    checked = cli("check-variant", tmp_path / "q")
    assert checked.exit_code == 0 and "ok, gemma4" in checked.output and "42 of them experts" in checked.output
    again = cli("quantize", "--model", path, "--out", tmp_path / "q")
    assert again.exit_code == 2 and "already exists" in again.output
    if not quantization_available():
        result = cli("quantize", "--model", tiny_gemma4, "--out", tmp_path / "q2", "--backend", "llm-compressor")
        assert result.exit_code == 2 and "omk-ray[quant]" in result.output and not (tmp_path / "q2").exists()


def _safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def test_check_variant_reads_every_tensor_of_an_unquantized_checkpoint(cli, tmp_path):
    import os

    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text(json.dumps({"model_type": "gemma4"}))
    _safetensors(good / "model.safetensors", {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
                 bytes(16))
    ok = cli("check-variant", good)
    assert ok.exit_code == 0 and "ok (not quantized)" in ok.output and "1 tensors" in ok.output, ok.output

    cases = {
        "random": os.urandom(4096),
        "truncated": (good / "model.safetensors").read_bytes()[:-4],
    }
    for name, data in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "gemma4"}))
        (folder / "model.safetensors").write_bytes(data)
        result = cli("check-variant", folder)
        assert result.exit_code == 2, (name, result.output)
        assert f"{folder / 'model.safetensors'}: not a readable safetensors file" in result.output, (name, result.output)
        assert "refused (1 problems)" in result.output
    # a header whose byte range disagrees with dtype x shape (F32 [2, 2] is 16 bytes, not 8)
    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text(json.dumps({"model_type": "gemma4"}))
    _safetensors(short / "model.safetensors", {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}},
                 bytes(8))
    result = cli("check-variant", short)
    assert result.exit_code == 2 and f"{short / 'model.safetensors'}: not a readable" in result.output, result.output
