"""GGUF variants through llama.cpp: convert a checkpoint to a 16-bit GGUF, compute an
importance matrix from calibration text, quantize (e.g. Q6_K), and check what came out.

    build_gguf(model_dir, out_dir, GGUFOptions(type="Q6_K", imatrix="calibration.txt"))

Steps, each recorded in the variant's provenance with its command, time and tool version:
  1. preflight  the architecture is one llama.cpp's converter knows; the tokenizer converts
  2. prepare    a converter-ready view of the checkpoint in a temp folder (weights linked, not
                copied), with two adaptations where needed (see `converter_ready`)
  3. convert    convert_hf_to_gguf.py --outtype f16|bf16|f32
  4. imatrix    llama-imatrix on the calibration text (optional)
  5. quantize   llama-quantize [--imatrix] base.gguf model-<TYPE>.gguf <TYPE> (none for 16/32-bit types)
  6. check      read the result with `gguf`: tensor types, and every tensor that is not of the
                requested type with the reason (a row width the type's block does not divide...)

The variant folder holds `model-<TYPE>.gguf`, `imatrix.gguf` (when one was computed), the
checkpoint's side files (config, tokenizer, chat template) and `omk_ray_provenance.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omk_ray.files import file_sha256, write_text_atomic
from omk_ray.variants.checkpoint import copy_side_files, publish, write_provenance
from omk_ray.variants.families import text_config
from omk_ray.variants.spec import GGUF_TYPES as TYPES
from omk_ray.variants.spec import GGUF_UNQUANTIZED as UNQUANTIZED
from omk_ray.variants.spec import GGUFOptions

GGUF_VERSION = "1"  # bump when the bytes a GGUF build writes would change


class GGUFError(ValueError):
    """A GGUF build that cannot be carried out; the message names the step and the problem."""


def gguf_identity(options: GGUFOptions, imatrix_path: Path | None) -> dict:
    """What the fingerprint hashes: the options, the calibration text's bytes, the pinned llama.cpp."""
    from omk_ray.llamacpp.tools import LLAMA_CPP_PYTHON

    if imatrix_path is not None and not imatrix_path.is_file():
        raise GGUFError(f"gguf.imatrix: calibration file {imatrix_path} does not exist")
    return {
        "scheme": "gguf",
        "gguf_version": GGUF_VERSION,
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        **options.model_dump(exclude={"imatrix", "allow_fallback"}),
        "imatrix_sha256": file_sha256(imatrix_path) if imatrix_path else None,
    }


def gguf_file(folder: str | Path) -> Path:
    """The one `*.gguf` model file of a variant folder (or the file itself)."""
    path = Path(folder)
    if path.is_file() and path.suffix == ".gguf":
        return path
    found = sorted(p for p in path.glob("*.gguf") if p.name != "imatrix.gguf") if path.is_dir() else []
    if len(found) != 1:
        raise GGUFError(f"{path}: expected one model .gguf file, found {[p.name for p in found] or 'none'}")
    return found[0]


# -- preflight and adaptations ---------------------------------------------------------------


def preflight(model_dir: Path, tools=None) -> None:
    """Refuse, before any work, a checkpoint whose architecture or tokenizer cannot convert."""
    tools = tools or _tools()
    config = _read_json(model_dir / "config.json")
    archs = config.get("architectures") or []
    if not archs:
        raise GGUFError(f"{model_dir}/config.json names no `architectures`; the converter needs one")
    supported = supported_architectures(tools)
    if archs[0] not in supported:
        moe = sorted(a for a in supported if "Moe" in a or "MoE" in a or a.startswith(("Gemma4", "Mixtral")))
        raise GGUFError(f"{model_dir}: architecture {archs[0]} is not supported by llama.cpp's converter "
                        f"({tools.version}); MoE architectures it converts: {', '.join(moe)}")
    if archs[0].startswith("Gemma4"):
        _gemma4_tokenizer_plan(model_dir)  # raises when the tokenizer cannot become a byte-fallback BPE


def supported_architectures(tools) -> set[str]:
    """The architectures the converter registers (`--print-supported-models`), cached per build."""
    cache = tools.root / "supported-architectures.json"
    if cache.is_file():
        return set(json.loads(cache.read_text()))
    done = subprocess.run([sys.executable, str(tools.converter), "--print-supported-models"],
                          capture_output=True, text=True)
    names = re.findall(r"^\s*-\s*(\w+)\s*$", done.stdout + done.stderr, flags=re.M)
    if done.returncode or not names:
        raise GGUFError(f"{tools.converter} --print-supported-models failed: {(done.stderr or done.stdout)[-2000:]}")
    try:
        write_text_atomic(cache, json.dumps(sorted(set(names))))
    except OSError:
        pass  # a read-only cache: ask again next time
    return set(names)


def converter_ready(model_dir: Path, dest: Path) -> list[str]:
    """A view of `model_dir` in `dest` that the converter accepts; returns the adaptations made.

    - Gemma 4 configs without `global_head_dim`: transformers takes the full-attention layers'
      head size from `per_layer_config` (or `head_dim`); the converter asserts on the key.
      The value transformers resolves is written in (and `omk_ray.llamacpp.convert` hands it
      to the converter, whose config loader would drop it again).
    - Gemma 4 GGUFs need a byte-fallback BPE tokenizer with merges; a character-level
      WordLevel tokenizer (the toy's) is rewritten as the equivalent BPE: the same ids, spaces
      as `▁`, every character its own token (one merge that never fires, since llama.cpp reads
      the merges key), the vocabulary padded to the embedding's rows with `<unusedN>`.
    Weights are linked, not copied.
    """
    dest.mkdir(parents=True)
    for src in model_dir.iterdir():
        if src.is_file():
            os.symlink(src.resolve(), dest / src.name)
    config = _read_json(model_dir / "config.json")
    done = []
    if (config.get("architectures") or [""])[0].startswith("Gemma4"):
        text = text_config(config)
        if text.get("global_head_dim") is None:
            text["global_head_dim"] = _full_attention_head_dim(model_dir)
            done.append(f"config.json: global_head_dim = {text['global_head_dim']} (what transformers uses "
                        "for the full-attention layers)")
            _replace(dest / "config.json", json.dumps(config, indent=2))
        plan = _gemma4_tokenizer_plan(model_dir)
        if plan is not None:
            _replace(dest / "tokenizer.json", json.dumps(plan, ensure_ascii=False))
            done.append("tokenizer.json: character-level WordLevel rewritten as the equivalent byte-fallback BPE "
                        f"(same ids, spaces as ▁, vocabulary padded to {len(plan['model']['vocab'])})")
            _check_same_ids(model_dir, dest)
    return done


def _full_attention_head_dim(model_dir: Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config()
    for i, kind in enumerate(text.layer_types):
        if kind == "full_attention":
            return int(text.per_layer_config[i].head_dim)
    return int(text.head_dim)


def _gemma4_tokenizer_plan(model_dir: Path) -> dict | None:
    """None when tokenizer.json is a byte-fallback BPE already, else its BPE rewrite (or an error)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFError(f"{model_dir}: no tokenizer.json; a Gemma 4 GGUF needs the fast tokenizer's file")
    tok = _read_json(path)
    model = tok.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback") and model.get("merges"):
        return None
    vocab = model.get("vocab") or {}
    added = {t["content"] for t in tok.get("added_tokens", [])}
    chars = [t for t in vocab if t not in added]
    if model.get("type") != "WordLevel" or any(len(t) != 1 for t in chars):
        raise GGUFError(
            f"{path}: a {model.get('type') or 'unknown'} tokenizer cannot become a Gemma 4 GGUF tokenizer: llama.cpp "
            "needs a byte-fallback BPE with merges (model.type BPE, byte_fallback true), and omk-ray converts only "
            "character-level WordLevel tokenizers into one")
    rows = _read_json(model_dir / "config.json")
    rows = text_config(rows).get("vocab_size") or len(vocab)
    bpe_vocab = {("▁" if t == " " else t): i for t, i in vocab.items()}
    free = [i for i in range(rows) if i not in set(vocab.values())]
    if len(free) < 3:
        raise GGUFError(f"{path}: no room for the BPE's unreachable merge (vocabulary {len(vocab)}, embedding rows {rows})")
    for n, i in enumerate(free[:-1]):
        bpe_vocab[f"<unused{n}>"] = i
    bpe_vocab["<unused0><unused1>"] = free[-1]
    out = dict(tok)
    out.update(
        normalizer={"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        pre_tokenizer=None,
        decoder={"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        model={"type": "BPE", "dropout": None, "unk_token": model.get("unk_token"), "continuing_subword_prefix": None,
               "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
               "vocab": bpe_vocab, "merges": [["<unused0>", "<unused1>"]]},
    )
    return out


def _check_same_ids(original: Path, ready: Path) -> None:
    """The rewritten tokenizer must give the original's ids on every character it knows."""
    from tokenizers import Tokenizer

    a, b = Tokenizer.from_file(str(original / "tokenizer.json")), Tokenizer.from_file(str(ready / "tokenizer.json"))
    probe = "".join(t for t in a.get_vocab() if len(t) == 1) + " a b  c\n\nxy z"
    ids_a, ids_b = a.encode(probe, add_special_tokens=False).ids, b.encode(probe, add_special_tokens=False).ids
    if ids_a != ids_b:
        raise GGUFError(f"{original}: the BPE rewrite of the tokenizer gives other ids ({ids_a[:20]} vs {ids_b[:20]})")


# -- the build -------------------------------------------------------------------------------


def build_gguf(model_dir: str | Path, out_dir: str | Path, options: GGUFOptions, *,
               imatrix_path: Path | None = None, provenance: dict | None = None, tools=None, log=None) -> Path:
    """Write the GGUF variant of `model_dir` to `out_dir` (staged beside it, then renamed).

    `model_dir` is a Hugging Face checkpoint, or a GGUF variant of `options.base_type` (an F16
    one, say): then the conversion is skipped and its GGUF is quantized as it is.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    log = log or (lambda message: print(message, file=sys.stderr))
    if out_dir.exists():
        raise GGUFError(f"{out_dir} already exists; refusing to overwrite it")
    if not (model_dir / "config.json").is_file():
        raise GGUFError(f"{model_dir}: no config.json (is this a Hugging Face checkpoint folder?)")
    if imatrix_path is None and options.imatrix:
        imatrix_path = Path(options.imatrix)
    identity = gguf_identity(options, imatrix_path)
    tools = tools or _tools()
    steps: list[dict] = []
    start = time.perf_counter()
    source = _gguf_source(model_dir, options)
    if source is None:
        preflight(model_dir, tools)
        steps.append({"step": "preflight", "architecture": _read_json(model_dir / "config.json")["architectures"][0]})
    else:
        steps.append({"step": "source", "gguf": str(source.resolve()), "type": options.base_type})

    with publish(out_dir, GGUFError) as tmp:
        final_name = f"model-{options.type}.gguf"
        base = source or tmp / f".base-{options.base_type}.gguf"
        if source is None:
            ready = tmp / ".ready"
            steps.append({"step": "prepare", "adaptations": converter_ready(model_dir, ready)})
            _step(steps, "convert", [sys.executable, "-m", "omk_ray.llamacpp.convert", str(tools.converter),
                                     str(ready), "--outfile", str(base), "--outtype", options.base_type.lower()],
                  log, _converter_error)
            shutil.rmtree(ready)
        threads = str(len(os.sched_getaffinity(0)))
        if options.type in UNQUANTIZED:
            if options.type == options.base_type:
                shutil.copy2(base, tmp / final_name) if source else base.rename(tmp / final_name)
            else:
                _step(steps, "quantize", [str(tools.bin("llama-quantize")), str(base), str(tmp / final_name),
                                          options.type, threads], log)
        else:
            imatrix_args: list[str] = []
            if imatrix_path is not None:
                cmd = [str(tools.bin("llama-imatrix")), "-m", str(base), "-f", str(imatrix_path),
                       "-o", str(tmp / "imatrix.gguf"), "-c", str(options.imatrix_ctx), "-t", threads]
                if options.imatrix_chunks:
                    cmd += ["--chunks", str(options.imatrix_chunks)]
                _step(steps, "imatrix", cmd, log)
                if not (tmp / "imatrix.gguf").is_file():
                    raise GGUFError(f"llama-imatrix wrote no importance matrix from {imatrix_path}")
                steps[-1]["calibration"] = {"path": str(imatrix_path.resolve()), "sha256": identity["imatrix_sha256"]}
                imatrix_args = ["--imatrix", str(tmp / "imatrix.gguf")]
            _step(steps, "quantize", [str(tools.bin("llama-quantize")), *imatrix_args, str(base),
                                      str(tmp / final_name), options.type, threads], log)
        if source is None:
            base.unlink(missing_ok=True)
        check = check_types(tmp / final_name, options.type)
        steps.append({"step": "check", **check})
        if check["fallbacks"]:
            listed = "; ".join(f"{f['tensor']} {f['type']} ({f['why']})" for f in check["fallbacks"][:8])
            more = len(check["fallbacks"]) - 8
            message = (f"{len(check['fallbacks'])} of {check['quantizable']} tensors are not {TYPES[options.type]}: "
                       f"{listed}{f' and {more} more' if more > 0 else ''}")
            if not options.allow_fallback:
                raise GGUFError(f"{message} (allow_fallback: false)")
            log(f"gguf: {message}")
        copy_side_files(model_dir, tmp)  # tokenizer, chat template... (not a GGUF source's own .gguf files)
        shutil.copy2(model_dir / "config.json", tmp / "config.json")
        record = {
            **(provenance or {}),
            "tool": "omk-ray gguf",
            "gguf": identity,
            "llama_cpp": tools.identity,
            "gguf_py": _gguf_py_version(tools),
            "steps": steps,
            "file": final_name,
            "seconds": round(time.perf_counter() - start, 1),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_path": str(model_dir.resolve()),
        }
        write_provenance(tmp, model_dir, record)
    return out_dir


def _gguf_source(model_dir: Path, options: GGUFOptions) -> Path | None:
    """The GGUF of a GGUF variant folder (no safetensors), checked to be of `options.base_type`."""
    if any(model_dir.glob("*.safetensors")) or not any(model_dir.glob("*.gguf")):
        return None
    path = gguf_file(model_dir)
    kinds = {t.tensor_type.name for t in import_gguf().GGUFReader(str(path)).tensors if len(t.shape) > 1}
    if kinds - {options.base_type, "F32"}:
        raise GGUFError(f"{path} holds {', '.join(sorted(kinds))} tensors: quantize from a {options.base_type} "
                        f"GGUF (base_type), never from a quantized one")
    return path


def _step(steps: list[dict], name: str, cmd: list[str], log, explain=None) -> None:
    log(f"gguf {name}: {' '.join(Path(c).name if os.sep in c else c for c in cmd)}")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode:
        detail = (explain(output) if explain else None) or output[-3000:]
        raise GGUFError(f"gguf {name} failed (exit {done.returncode}): {detail}")
    entry = {"step": name, "argv": [Path(c).name if os.sep in c else c for c in cmd],
             "seconds": round(time.perf_counter() - start, 1)}
    notes = [line.strip() for line in output.splitlines() if "fallback" in line]
    if notes:
        entry["notes"] = notes[:20]
    steps.append(entry)


def _converter_error(output: str) -> str | None:
    found = re.search(r"Model (\w+) is not supported", output)
    if found:
        return f"architecture {found.group(1)} is not supported by llama.cpp's converter"
    lines = [line for line in output.splitlines() if line.strip()]
    return "\n".join(lines[-15:]) if lines else None


# -- the check -------------------------------------------------------------------------------


def check_types(path: Path, wanted: str) -> dict:
    """Tensor types of a GGUF; every 2-D+ tensor not of `wanted`'s ggml type, with why: `fallbacks`
    (llama.cpp could not store it so: a row width the type's block does not divide) and `kept`
    (llama.cpp's rules keep it elsewhere: routers in F32, the higher-precision tensors of a mix)."""
    gguf = import_gguf()
    reader = gguf.GGUFReader(str(path))
    target = gguf.GGMLQuantizationType[TYPES[wanted]]
    block = gguf.GGML_QUANT_SIZES[target][0]
    counts: dict[str, int] = {}
    fallbacks, kept, quantizable = [], [], 0
    for t in reader.tensors:
        kind = t.tensor_type.name
        counts[kind] = counts.get(kind, 0) + 1
        if len([d for d in t.shape if d > 1]) < 2:
            continue  # norms, scales, biases: llama.cpp keeps 1-D tensors in F32
        quantizable += 1
        if t.tensor_type == target:
            continue
        width = int(t.shape[0])  # ne[0]: the row width
        entry = {"tensor": t.name, "type": kind, "shape": [int(d) for d in t.shape]}
        if kind == "F32" and wanted != "F32":
            kept.append({**entry, "why": "llama.cpp does not quantize it: routers stay F32"})
        elif width % block:
            fallbacks.append({**entry, "why": f"row width {width} is not a multiple of {block}, the {target.name} block"})
        else:
            kept.append({**entry, "why": f"llama.cpp's {wanted} rules keep it at {kind}"})
    return {"types": dict(sorted(counts.items())), "quantizable": quantizable, "fallbacks": fallbacks, "kept": kept}


def import_gguf():
    """The `gguf` package of the pinned llama.cpp (its gguf-py folder), imported from the build."""
    path = str(_tools().gguf_py)
    if path not in sys.path:
        sys.path.insert(0, path)
    import gguf

    return gguf


def _gguf_py_version(tools) -> str | None:
    found = re.search(r'^version = "([^"]+)"', (tools.gguf_py / "pyproject.toml").read_text(), flags=re.M)
    return found.group(1) if found else None


def _tools():
    from omk_ray.llamacpp.tools import find_tools

    return find_tools()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise GGUFError(f"{path}: cannot read it as JSON: {err}") from None


def _replace(link: Path, text: str) -> None:
    link.unlink()
    link.write_text(text)


