"""Every `prune` refusal names the file it is about (drop map, summary, checkpoint), exit 2, nothing written.

The tiny Gemma 4 has 2 MoE layers of 8 experts, top-2."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from omk_ray.variants.commands import register

CASES = {  # name: (files to write {name: bytes}, extra args, the message with {model}, {d} = tmp folder)
    "no drop map": ({}, ["--drop-map", "{d}/nope.json"], "{d}/nope.json: no such drop-map file"),
    "drop map not UTF-8": ({"map.json": b'{"0": [\xe9]}'}, [],
                           "{d}/map.json: not UTF-8 text (byte 7: invalid continuation byte)"),
    "drop map not JSON": ({"map.json": b'{"0": [1'}, [], "{d}/map.json: not valid JSON: Expecting"),
    "drop map not an object": ({"map.json": b"[1, 2]"}, [],
                               "{d}/map.json: a drop map must be a non-empty JSON object {{layer: [expert ids]}}"),
    "expert out of range": ({"map.json": b'{"0": [99], "1": [0]}'}, [],
                            "{d}/map.json: layer 0: expert ids [99] are outside 0..7 (checked against checkpoint "
                            "{model})"),
    "layer not in the model": ({"map.json": b'{"7": [1], "1": [0]}'}, [],
                               "{d}/map.json: the drop map names layers ['7'], which have no MoE experts in the model "
                               "(checked against checkpoint {model})"),
    "no summary": ({}, ["--summary", "{d}/nope.json"], "{d}/nope.json: no such summary file"),
    "summary not an object": ({"s.json": b"[1]"}, ["--summary", "{d}/s.json"],
                              "{d}/s.json: not a drop-map summary"),
    "summary not UTF-8": ({"s.json": b"\xe9"}, ["--summary", "{d}/s.json"], "{d}/s.json: not UTF-8 text"),
    "drops a protected expert": ({"s.json": b'{"protected": {"0": [0]}}'}, ["--summary", "{d}/s.json"],
                                 "{d}/map.json: layer 0: the drop map drops protected experts [0] (checked against "
                                 "checkpoint {model} and the protections of {d}/s.json)"),
    "no checkpoint": ({}, ["--model", "{d}/none"], "{d}/none: no such checkpoint folder"),
    "config not UTF-8": ({"ckpt/config.json": b"\xe9"}, ["--model", "{d}/ckpt"],
                         "{d}/ckpt/config.json: not UTF-8 text"),
    "config not an object": ({"ckpt/config.json": b"[1]"}, ["--model", "{d}/ckpt"],
                             "{d}/ckpt/config.json: not a model config (a JSON object)"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_prune_refusal_names_its_file(tiny_gemma4, tmp_path, case):
    files, args, message = CASES[case]
    files = {"map.json": b'{"0": [0], "1": [0]}', **files}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    options = {"--model": str(tiny_gemma4), "--drop-map": str(tmp_path / "map.json"), "--out": str(tmp_path / "out")}
    options.update({args[i]: args[i + 1].format(d=tmp_path) for i in range(0, len(args), 2)})
    given = [part for pair in options.items() for part in pair]
    app = typer.Typer()
    register(app)
    done = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["prune", *given])
    assert done.exit_code == 2, done.output
    expected = "error: " + message.format(d=tmp_path, model=tiny_gemma4)
    assert " ".join(done.output.split()).startswith(expected), done.output
    assert "Traceback" not in done.output and not (tmp_path / "out").exists()
