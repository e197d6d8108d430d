"""GGUF variants and the llamacpp engine, on the real llama.cpp tools (`make llamacpp` builds them;
`make test` depends on it): conversion with the toy's adaptations, Q6_K with an importance
matrix, llama-server driven by the engine, and a killed server inside a farm run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import write_grid
from helpers.samples import bench_rows, grid_config, write_store
from omk_ray.config import Recipe, VariantSpec, load_grid
from omk_ray.farm.runner import run_grid
from omk_ray.engines.base import Request
from omk_ray.toy.data import CALIBRATION_FILE, calibration_text, shipped
from omk_ray.variants.gguf import GGUFError, GGUFOptions, build_gguf, converter_ready, gguf_file, import_gguf
from omk_ray.variants.artifacts import BuildError, ensure_variant, parse_build, resolve_build

TOY_RECIPE = Recipe(max_gen_toks=8, temperature=0)


@pytest.fixture(scope="session")
def llama_tools():
    from omk_ray.llamacpp.tools import ToolsMissing, find_tools

    try:
        return find_tools()
    except ToolsMissing as err:
        if os.environ.get("CI"):
            raise  # `make test` builds the tools first: missing in CI is a failure
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def toy_f16(tmp_path_factory, llama_tools) -> Path:
    """The shipped toy converted to an F16 GGUF through a build block."""
    return ensure_variant({"base": str(shipped()), "quantization": "gguf", "gguf": {"type": "F16"}},
                          tmp_path_factory.mktemp("artifacts"))


def toy_problems(n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in shipped("bench.jsonl").read_text().splitlines()]
    return rows[:n] if n else rows


def requests_for(problems: list[dict]) -> list[Request]:
    return [Request(id=p["id"], messages=[{"role": "user", "content": p["prompt"]}]) for p in problems]


def llamacpp_variant(name: str, model: Path, **extra) -> dict:
    return {"name": name, "model": str(model), "engine": "llamacpp",
            "engine_args": {"max_model_len": 256, "extra": {"concurrency": 4, "threads": 2, **extra}}}


def llama_servers() -> dict[int, str]:
    """pid -> command line of every llama-server process on this machine."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and "/bin/llama-server " in cmd:
            out[int(proc.name)] = cmd
    return out


# -- build blocks (no tools needed) -----------------------------------------------------------


def test_gguf_build_blocks_are_validated_and_fingerprinted(tmp_path):
    for block, message in [
        ({"base": "m", "quantization": "gguf", "gguf": {"type": "Q7_K"}}, "unknown GGUF type 'Q7_K'"),
        ({"base": "m", "gguf": {"type": "Q8_0"}}, "a `gguf` block needs `quantization: gguf`"),
        ({"base": "m", "quantization": "gguf", "gguf": {"type": "F16", "imatrix": "c.txt"}}, "does nothing for F16"),
        ({"base": "m", "quantization": "gguf", "gguf": {"types": "Q6_K"}}, "gguf.types: Extra inputs"),
    ]:
        with pytest.raises(BuildError, match=message):
            parse_build(block)
    assert parse_build({"base": "m", "quantization": "gguf"}).quantization == "gguf"

    base = str(shipped())
    (tmp_path / "calib.txt").write_text("one text")
    q6 = {"base": base, "quantization": "gguf", "gguf": {"type": "Q6_K", "imatrix": "calib.txt"}}
    first = resolve_build(q6, tmp_path / "a", tmp_path)
    assert first.spec.gguf.imatrix == str((tmp_path / "calib.txt").resolve())  # found from the config's folder
    assert resolve_build(q6, tmp_path / "a", tmp_path).fingerprint == first.fingerprint
    (tmp_path / "calib.txt").write_text("another text")  # the calibration text's bytes are part of the identity
    assert resolve_build(q6, tmp_path / "a", tmp_path).fingerprint != first.fingerprint
    others = [{**q6, "gguf": {"type": "Q6_K"}}, {**q6, "gguf": {"type": "Q8_0", "imatrix": "calib.txt"}},
              {**q6, "gguf": {"type": "Q6_K", "base_type": "BF16"}}]
    prints = {resolve_build(b, tmp_path / "a", tmp_path).fingerprint for b in others}
    assert len(prints) == 3 and first.fingerprint not in prints
    defaults = resolve_build({"base": base, "quantization": "gguf"}, tmp_path / "a", tmp_path)
    assert defaults.fingerprint == resolve_build(others[0], tmp_path / "a", tmp_path).fingerprint  # Q6_K, F16 base
    with pytest.raises(GGUFError, match="calibration file .*missing.txt does not exist"):
        resolve_build({**q6, "gguf": {"type": "Q6_K", "imatrix": "missing.txt"}}, tmp_path / "a", tmp_path)


def test_converter_ready_copy_of_the_toy_keeps_every_token_id(tmp_path):
    from transformers import AutoTokenizer

    done = converter_ready(shipped(), tmp_path / "ready")
    assert len(done) == 2 and done[0].startswith("config.json: global_head_dim = 32")
    config = json.loads((tmp_path / "ready" / "config.json").read_text())
    assert config["global_head_dim"] == 32 and "global_head_dim" not in json.loads((shipped() / "config.json").read_text())
    assert (tmp_path / "ready" / "model.safetensors").is_symlink()  # weights linked, not copied
    tok = json.loads((tmp_path / "ready" / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and tok["model"]["byte_fallback"] and tok["model"]["merges"]
    assert tok["decoder"]["type"] == "Sequence" and len(tok["model"]["vocab"]) == config["vocab_size"]

    original, ready = AutoTokenizer.from_pretrained(shipped()), AutoTokenizer.from_pretrained(tmp_path / "ready")
    for p in toy_problems()[::10]:
        text = original.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                            add_generation_prompt=True)
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert ready(text, add_special_tokens=False)["input_ids"] == ids
        assert ready.decode(ids) == original.decode(ids) == text


def test_unconvertible_tokenizer_is_refused_with_the_reason(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(shipped(), model)
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["model"] = {"type": "WordPiece", "vocab": tok["model"]["vocab"], "unk_token": "<unk>"}
    (model / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(GGUFError, match="a WordPiece tokenizer cannot become a Gemma 4 GGUF tokenizer: llama.cpp needs "
                                        "a byte-fallback BPE with merges"):
        converter_ready(model, tmp_path / "ready")


def test_calibration_text_is_shipped():
    assert shipped(CALIBRATION_FILE).read_text() == calibration_text()
    assert calibration_text().count("<|turn>model\n") == 400


def test_tool_cache_is_keyed_by_version_and_flags(tmp_path, monkeypatch):
    from omk_ray.llamacpp import tools

    cpu, cuda = tools.build_dir("cpu", root=tmp_path), tools.build_dir("cuda", root=tmp_path)
    assert cpu.name.startswith(f"{tools.LLAMA_CPP_PYTHON}-cpu-") and cuda.name.startswith(f"{tools.LLAMA_CPP_PYTHON}-cuda-")
    assert tools.build_dir("cpu", ["-DGGML_AVX512=ON"], root=tmp_path) not in (cpu, cuda)
    monkeypatch.setenv("OMK_RAY_LLAMACPP_CACHE", str(tmp_path))
    monkeypatch.delenv("OMK_RAY_LLAMACPP", raising=False)
    with pytest.raises(tools.ToolsMissing, match="run `make llamacpp`"):
        tools.find_tools()
    cpu.mkdir()
    info = {"llama_cpp_python": tools.LLAMA_CPP_PYTHON, "llama_cpp_commit": "abc1234", "profile": "cpu",
            "flags": tools.build_flags("cpu"), "sdist_sha256": "0", "built_at": "2026-01-01T00:00:00Z"}
    (cpu / tools.INFO_NAME).write_text(json.dumps(info))
    said = []
    assert tools.build_tools("cpu", root=tmp_path, log=said.append).root == cpu.resolve()  # reused: nothing built
    assert said == [f"llama.cpp: reusing {cpu}"]
    assert tools.find_tools().version == f"llama.cpp abc1234 (llama-cpp-python {tools.LLAMA_CPP_PYTHON}, cpu)"
    monkeypatch.setenv("OMK_RAY_LLAMACPP", str(tmp_path / "nowhere"))
    with pytest.raises(tools.ToolsMissing, match="not a complete llama.cpp build"):
        tools.find_tools()


def test_the_build_is_chosen_by_profile_not_by_age(tmp_path, monkeypatch, caplog):
    """A GPU node with a cpu and a cuda build: the cuda one where CUDA is visible, even when the cpu one is
    newer. No GPU exists here: `cuda_visible` is replaced by a fake that says what a GPU process would."""
    from omk_ray.llamacpp import tools

    def fake_build(profile: str, built_at: str):
        folder = tools.build_dir(profile, root=tmp_path)
        folder.mkdir()
        info = {"llama_cpp_python": tools.LLAMA_CPP_PYTHON, "llama_cpp_commit": "abc1234", "profile": profile,
                "flags": tools.build_flags(profile), "sdist_sha256": "0", "built_at": built_at}
        (folder / tools.INFO_NAME).write_text(json.dumps(info))
        return folder.resolve()

    monkeypatch.setenv("OMK_RAY_LLAMACPP_CACHE", str(tmp_path))
    monkeypatch.delenv("OMK_RAY_LLAMACPP", raising=False)
    monkeypatch.delenv(tools.PROFILE_ENV, raising=False)
    gpu = {"visible": True}
    monkeypatch.setattr(tools, "cuda_visible", lambda: gpu["visible"])
    cpu = fake_build("cpu", "2026-02-01T00:00:00Z")
    with caplog.at_level("WARNING", logger="omk_ray.llamacpp"):
        assert tools.find_tools().root == cpu  # the only build: used, and said
    assert "a CUDA device is visible but llama.cpp" in caplog.text and "--profile cuda" in caplog.text
    cuda = fake_build("cuda", "2026-01-01T00:00:00Z")  # older than the cpu build
    assert tools.find_tools().root == cuda
    gpu["visible"] = False
    assert tools.find_tools().root == cpu
    monkeypatch.setenv(tools.PROFILE_ENV, "cuda")
    assert tools.find_tools().root == cuda  # asked for by name, whatever is visible
    monkeypatch.setenv(tools.PROFILE_ENV, "rocm")
    with pytest.raises(tools.ToolsMissing, match="OMK_RAY_LLAMACPP_PROFILE=rocm: unknown profile; choose one of cpu, cuda"):
        tools.find_tools()
    monkeypatch.delenv(tools.PROFILE_ENV)
    for p in cpu.iterdir():
        p.unlink()
    cpu.rmdir()
    with pytest.raises(tools.ToolsMissing, match="no CUDA device is visible .* no cpu build .*builds there: cuda"):
        tools.find_tools()
    monkeypatch.setenv(tools.PROFILE_ENV, "cpu")
    with pytest.raises(tools.ToolsMissing, match="OMK_RAY_LLAMACPP_PROFILE=cpu: no cpu build .*--profile cpu"):
        tools.find_tools()
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert tools.cuda_visible() is False  # a Ray process given no GPU


def test_llamacpp_engine_options_are_its_own():
    from pydantic import ValidationError

    from omk_ray.engines.llamacpp_engine import LlamaCppEngine

    assert LlamaCppEngine.Options.model_validate({"threads": 2, "cache_type": "q8_0"}).concurrency == 2  # card: -np 2
    with pytest.raises(ValidationError, match="gpu_layer"):
        LlamaCppEngine.Options.model_validate({"gpu_layer": 99})
    variant = VariantSpec(**llamacpp_variant("v", Path("/nowhere"), base_url="http://gpu-node-3:8080/v1"))
    with pytest.raises(ValueError, match="starts its own llama-server, so engine_args.extra takes no base_url"):
        LlamaCppEngine(variant, "/nowhere")


def test_serving_cohorts_side_by_side(tmp_path):
    from omk_ray.analysis.serving import ServingCohort, side_by_side

    outcomes = {"base": [1, 1, 1, 0], "arm": [1, 0, 1, 0], "base-q": [1, 1, 0, 0], "arm-q": [1, 0, 0, 0]}
    rows = [r for v, o in outcomes.items() for r in bench_rows(v, "b", [bool(x) for x in o])]
    for r in rows:  # arm-q gets d1 wrong like arm, in other words
        if r["variant"] == "arm-q" and r["doc_id"] == "d1":
            r["response"] = "something else"
    write_store(tmp_path, rows)
    side = side_by_side(tmp_path, [ServingCohort("vllm", ["base", "arm"]), ServingCohort("gguf", ["base-q", "arm-q"])],
                        resamples=200)
    by_arm = {r["arm"]: r for r in side.scores}
    assert by_arm["base"]["vllm"]["score"] == 75.0 and by_arm["base"]["gguf"]["score"] == 50.0
    assert by_arm["base"]["gguf"]["delta_pp"] is None
    assert by_arm["arm"]["vllm"]["delta_pp"] == pytest.approx(-25.0)  # arm vs base, in its own cohort
    assert by_arm["arm"]["gguf"]["delta_pp"] == pytest.approx(-25.0)  # arm-q vs base-q
    agree = {r["arm"]: r for r in side.agreement}
    assert agree["base"]["n"] == 4 and agree["base"]["same_verdict_pct"] == 75.0  # d2 differs
    assert agree["base"]["identical_pct"] == 100.0
    assert agree["arm"]["same_verdict_pct"] == 75.0 and agree["arm"]["identical_pct"] == 75.0
    from omk_ray.analysis.markdown import render

    text = render(side.sections())
    assert "| b | arm | 50.00% (arm) −25.00pp | 25.00% (arm-q) −25.00pp |" in text


def test_serving_side_by_side_names_the_problems_of_each_cell_and_agrees_on_the_primary_metric(tmp_path):
    """A partly covered arm (arm-q answered 2 of the 4 problems) and a declared primary metric
    (`strict`) that disagrees with the rows' `correct`: the baseline's cell is its full-bench score,
    the arm's says "on 2", and agreement counts verdicts on `strict`."""
    from omk_ray.analysis.markdown import render
    from omk_ray.analysis.serving import ServingCohort, side_by_side

    strict = {"base": [1, 1, 0, 0], "base-q": [1, 0, 0, 0], "arm": [1, 1, 0, 0], "arm-q": [0, 1]}
    rows = []
    for variant, values in strict.items():
        for r, value in zip(bench_rows(variant, "b", [True] * len(values)), values):
            rows.append({**r, "metrics": {"exact_match": 1.0, "strict": float(value)}})
    rows[-2]["response"] = "something else"  # arm-q's d0: another text
    config = grid_config([{"name": v} for v in strict], ["b"])
    config["benches"][0]["options"] = {"primary_metric": "strict"}
    write_store(tmp_path, rows, [config])
    side = side_by_side(tmp_path, [ServingCohort("vllm", ["base", "arm"]), ServingCohort("gguf", ["base-q", "arm-q"])],
                        resamples=200)
    by_arm = {r["arm"]: r for r in side.scores}
    assert (by_arm["base"]["gguf"]["score"], by_arm["base"]["gguf"]["n"]) == (25.0, 4)  # all 4, not the 2 shared
    assert (by_arm["arm"]["gguf"]["score"], by_arm["arm"]["gguf"]["delta_pp"], by_arm["arm"]["gguf"]["n"]) == (
        50.0, 0.0, 2)  # arm-q and base-q on d0, d1
    text = render(side.sections())
    assert "| b | base | 50.00% (base) | 25.00% (base-q) |" in text
    assert "| b | arm | 50.00% (arm) 0.00pp | 50.00% (arm-q) 0.00pp on 2 |" in text
    agree = {r["arm"]: r for r in side.agreement}
    assert (agree["base"]["n"], agree["base"]["same_verdict_pct"], agree["base"]["identical_pct"]) == (4, 75.0, 100.0)
    assert (agree["arm"]["n"], agree["arm"]["same_verdict_pct"], agree["arm"]["identical_pct"]) == (2, 50.0, 50.0)


# -- the real tools ---------------------------------------------------------------------------


def test_unsupported_architecture_is_refused_before_any_work(tmp_path, llama_tools):
    model = tmp_path / "m"
    shutil.copytree(shipped(), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["FrobnicatorMoeForCausalLM"]}))
    with pytest.raises(GGUFError, match="architecture FrobnicatorMoeForCausalLM is not supported by llama.cpp's "
                                        "converter .*Qwen3MoeForCausalLM"):
        ensure_variant({"base": str(model), "drop_map": {"0": [0], "1": [0], "2": [0]}, "quantization": "gguf"},
                       tmp_path / "artifacts")
    assert not any((tmp_path / "artifacts").glob("*/config.json"))  # refused before the surgery ran


@pytest.mark.slow
def test_f16_gguf_on_llamacpp_matches_transformers_greedy(toy_f16, llama_tools, capsys):
    from omk_ray.engines.llamacpp_engine import LlamaCppEngine
    from omk_ray.toy.evaluate import open_engine

    record = json.loads((toy_f16 / "omk_ray_provenance.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["preflight", "prepare", "convert", "check"]
    assert record["llama_cpp"]["llama_cpp_commit"] == llama_tools.info["llama_cpp_commit"]
    assert record["gguf"]["type"] == "F16" and len(record["steps"][1]["adaptations"]) == 2
    assert gguf_file(toy_f16).name == "model-F16.gguf"

    problems = toy_problems()
    hf = open_engine(str(shipped()))
    try:
        reference = hf.generate_batch(requests_for(problems), TOY_RECIPE)
    finally:
        hf.close()
    variant = VariantSpec(**llamacpp_variant("toy-f16", toy_f16))
    engine = LlamaCppEngine(variant, str(toy_f16))
    try:
        assert engine.version.startswith(f"llamacpp {llama_tools.version}")
        assert engine.capacity == 4
        served = engine.generate_batch(requests_for(problems), TOY_RECIPE)
        thinking = Recipe(enable_thinking=True, thinking_budget=64, max_gen_toks=8)
        body = engine.payload(requests_for(problems[:1])[0], thinking)
        pid = engine.server.pid
    finally:
        engine.close()
    assert pid not in llama_servers()  # stopped with the engine
    assert body["repeat_penalty"] == 1.0 and body["top_k"] == 0 and body["min_p"] == 0.0
    assert body["reasoning_budget_tokens"] == 64 and body["reasoning_format"] == "deepseek"
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert all(c.error is None for c in served)
    same_prompt = sum(s.prompt_tokens == r.prompt_tokens for s, r in zip(served, reference))
    same = sum(s.text == r.text for s, r in zip(served, reference))
    with capsys.disabled():
        print(f"\nF16 GGUF on llama-server vs transformers greedy: {same}/{len(problems)} identical answers, "
              f"{same_prompt}/{len(problems)} identical prompt lengths")
    assert same_prompt == len(problems)  # the server renders and tokenizes the prompt as transformers does
    assert same >= 0.98 * len(problems)


def _wide_gemma4(out: Path) -> Path:
    from omk_ray.toy.tiny import build_tiny_gemma4

    # every row width a multiple of 256: hidden, head, FFN and expert widths
    return build_tiny_gemma4(out, seed=1, num_experts=4, top_k=2, layers=2, hidden=256, head_dim=256,
                             moe_intermediate=256, intermediate=256, heads=1, kv_heads=1)


OWNER = """
import sys, threading, time
from pathlib import Path
from omk_ray.llamacpp import server
if sys.argv[3] == "prctl":  # as on a machine without setpriv
    which = server.shutil.which
    server.shutil.which = lambda name, *a, **k: None if name == "setpriv" else which(name, *a, **k)
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()  # a multithreaded owner, like an actor
s = server.LlamaServer(Path(sys.argv[1]), Path(sys.argv[2]), ["--ctx-size", "256", "--n-gpu-layers", "0"])
print(s.pid, " ".join(server.die_with_parent()[0]), flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # the toy's F16 conversion (~30 s, shared); each case ~3 s
@pytest.mark.parametrize("how", ["setpriv", "prctl"])
def test_a_killed_owner_leaves_no_llama_server(toy_f16, llama_tools, how):
    """The owner (an engine actor) dies by SIGKILL, which it cannot catch: its llama-server goes with it."""
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(llama_tools.bin("llama-server")), str(gguf_file(toy_f16)),
                              how], stdout=subprocess.PIPE, text=True)
    try:
        pid, prefix = owner.stdout.readline().strip().partition(" ")[::2]
        pid = int(pid)
        assert prefix == ("" if how == "prctl" else f"{shutil.which('setpriv')} --pdeathsig KILL --")
        assert pid in llama_servers() and "setpriv" not in llama_servers()[pid]  # setpriv exec'd the server
        ppid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("PPid:"))
        assert int(ppid.split()[1]) == owner.pid
    finally:
        owner.kill()
        owner.wait()
    for _ in range(50):
        if pid not in llama_servers():
            break
        time.sleep(0.1)
    assert pid not in llama_servers()


@pytest.mark.slow
def test_q6k_with_an_importance_matrix_writes_real_q6k_tensors(tmp_path, llama_tools):
    f16 = build_gguf(_wide_gemma4(tmp_path / "wide"), tmp_path / "f16", GGUFOptions(type="F16"), log=lambda m: None)
    (tmp_path / "calibration.txt").write_text(calibration_text())
    with_imatrix = build_gguf(f16, tmp_path / "q6k-imatrix", GGUFOptions(
        type="Q6_K", imatrix=str(tmp_path / "calibration.txt"), imatrix_ctx=128, imatrix_chunks=8), log=lambda m: None)
    plain = build_gguf(f16, tmp_path / "q6k", GGUFOptions(type="Q6_K"), log=lambda m: None)

    record = json.loads((with_imatrix / "omk_ray_provenance.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["source", "imatrix", "quantize", "check"]  # from the F16 GGUF
    assert record["steps"][1]["calibration"]["sha256"] == record["gguf"]["imatrix_sha256"]
    assert "--imatrix" in record["steps"][2]["argv"] and (with_imatrix / "imatrix.gguf").is_file()
    assert record["base_provenance"]["gguf"]["type"] == "F16"
    check = record["steps"][-1]
    assert check["fallbacks"] == []
    assert {k["tensor"] for k in check["kept"]} == {"blk.0.ffn_gate_inp.weight", "blk.1.ffn_gate_inp.weight"}
    assert check["types"]["Q6_K"] == check["quantizable"] - 2 >= 10

    gguf = import_gguf()
    tensors = [{t.name: t for t in gguf.GGUFReader(str(gguf_file(p))).tensors} for p in (with_imatrix, plain)]
    q6k = [name for name, t in tensors[0].items() if t.tensor_type == gguf.GGMLQuantizationType.Q6_K]
    assert {"blk.0.attn_q.weight", "blk.0.ffn_down_exps.weight", "blk.1.ffn_gate_up_exps.weight"} <= set(q6k)
    assert all(tensors[1][n].tensor_type == gguf.GGMLQuantizationType.Q6_K for n in q6k)
    changed = [n for n in q6k if tensors[0][n].data.tobytes() != tensors[1][n].data.tobytes()]
    assert len(changed) >= len(q6k) // 2  # the importance matrix moved the quantized values


@pytest.mark.slow
def test_q6k_on_the_toy_names_every_fallback(tmp_path, toy_f16):
    with pytest.raises(GGUFError) as err:
        build_gguf(toy_f16, tmp_path / "q6k", GGUFOptions(type="Q6_K", allow_fallback=False), log=lambda m: None)
    message = str(err.value)
    assert message.startswith("28 of 31 tensors are not Q6_K: ") and "(allow_fallback: false)" in message
    assert "blk.0.attn_q.weight Q8_0 (row width 96 is not a multiple of 256, the Q6_K block)" in message
    assert not (tmp_path / "q6k").exists() and not list(tmp_path.glob(".q6k.partial-*"))

    q8 = build_gguf(toy_f16, tmp_path / "q8", GGUFOptions(type="Q8_0"), log=lambda m: None)
    check = json.loads((q8 / "omk_ray_provenance.json").read_text())["steps"][-1]
    assert [f["tensor"] for f in check["fallbacks"]] == [f"blk.{i}.ffn_down.weight" for i in range(3)]  # width 16
    assert check["fallbacks"][0]["why"] == "row width 16 is not a multiple of 32, the Q8_0 block"
    with pytest.raises(GGUFError, match="holds .*Q8_0.* tensors: quantize from a F16 GGUF"):
        build_gguf(q8, tmp_path / "q6k-from-q8", GGUFOptions(type="Q6_K"), log=lambda m: None)


@pytest.mark.slow
def test_killed_llama_server_is_replaced_and_no_sample_is_lost(tmp_path, toy_f16, local_ray):
    from omk_ray.results.store import ResultsStore

    problems = toy_problems()[::8]  # 50 problems of every class
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in problems))
    grid = load_grid(write_grid(tmp_path / "grid.yaml", [llamacpp_variant("toy-f16", toy_f16, concurrency=2)],
                                [{"name": "toy", "kind": "jsonl", "source": str(bench)}],
                                recipe={"max_gen_toks": 8},
                                farm={"max_in_flight": 8, "flush_samples": 4, "max_engines": 1}))
    before = set(llama_servers())
    killed = []

    def kill_server_soon(variant, bench, table):
        if not killed:  # a first shard is written: requests are in flight when the server dies
            server = next(pid for pid, cmd in llama_servers().items() if pid not in before and str(toy_f16) in cmd)
            killed.append(server)
            threading.Timer(0.2, os.kill, (server, signal.SIGKILL)).start()

    summary = run_grid(grid, tmp_path / "results", show_progress=False, on_shard=kill_server_soon)
    assert killed and summary.status == "finished" and summary.generated == len(problems)
    rows = ResultsStore(tmp_path / "results").read().to_pylist()
    assert sorted(r["doc_id"] for r in rows) == sorted(p["id"] for p in problems)  # each exactly once
    assert all(r["error"] is None and r["engine"] == "llamacpp" and r["completion_tokens"] >= 1 for r in rows)
    assert sum(r["correct"] for r in rows) >= 0.8 * len(rows)  # real answers of the trained toy
    run = ResultsStore(tmp_path / "results").runs()[-1]
    events = run.events()
    died = [e for e in events if e["event"] == "engine_died"]
    assert len(died) == 1 and died[0]["in_flight"] >= 1 and summary.failed == 0
    started = [e["info"]["pid"] for e in events if e["event"] == "engine_started"]
    assert len(started) == 2 and started[0] != started[1]  # a replacement actor, with its own server
    for _ in range(50):  # the replacement's server ends with its actor (SIGKILL on the actor's death)
        if not set(llama_servers()) - before:
            break
        time.sleep(0.1)
    assert not set(llama_servers()) - before
