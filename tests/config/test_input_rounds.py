"""`plan` names every problem of a grid in one report, whichever check finds it (the grid's fields, its
checkpoints and builds, its benches' data); inputs that are not UTF-8 or not objects are named by file."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from helpers import hf_variant, write_bench
from omk_ray.benches.sources import DataError, read_local
from omk_ray.cli import app

cli = CliRunner(env={"COLUMNS": "400"})


def test_a_problem_of_every_kind_is_named_in_one_report(tmp_path, tiny_gemma4):
    """Fields that do not validate, a build that cannot be made, a missing checkpoint, bench rows that are
    not objects and a missing bench file: one `plan`, one report, exit 2."""
    (tmp_path / "rows.jsonl").write_text('{"id": "1", "prompt": "p", "target": "t"}\n["an", "array"]\n')
    scores = tmp_path / "scores.json"
    scores.write_text("{}")
    grid = {
        "name": "rounds",
        "recipe": {"max_gen_toks": 8, "temperature": "hot"},
        "variants": [
            hf_variant("good", tiny_gemma4),
            {**hf_variant("bad-args", tiny_gemma4), "engine_args": {"dtype": 7}},
            {"name": "no-experts-left", "engine": "transformers",
             "build": {"base": str(tiny_gemma4), "drop": 8, "scores": str(scores)}},
            {"name": "missing", "engine": "transformers", "model": str(tmp_path / "nowhere") + "/"},
        ],
        "benches": [
            {"name": "rows", "kind": "jsonl", "source": str(tmp_path / "rows.jsonl")},
            {"name": "ok", "kind": "jsonl", "source": str(write_bench(tmp_path / "ok.jsonl", 2))},
            {"name": "gone", "kind": "jsonl", "source": str(tmp_path / "gone.jsonl")},
        ],
        "farm": {"canary": {"enabled": False}},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    done = cli.invoke(app, ["plan", str(path)])
    assert done.exit_code == 2, done.output
    lines = [line.strip() for line in done.output.splitlines()]
    assert lines[0] == f"error: {path}: invalid grid config"
    assert lines[1:] == [
        "recipe.temperature: Input should be a valid number, unable to parse string as a number",
        "variants.1.engine_args.dtype: Input should be a valid string",
        "variant 'no-experts-left': build.drop 8 leaves 0 of the base's 8 experts per layer: at least one must stay",
        f"variant 'missing': model folder {tmp_path / 'nowhere'} not found (a hub id is NAME or ORG/NAME)",
        f"bench 'rows': {tmp_path / 'rows.jsonl'}:2: not a bench problem (a JSON array, not an object "
        '{"id", "prompt", "target", ...})',
        f"bench 'gone': data file {tmp_path / 'gone.jsonl'} not found",
    ]

    # The same grid with its fields fixed: the rest is still named, now as what cannot run.
    grid["recipe"].pop("temperature")
    grid["variants"][1]["engine_args"] = {"dtype": "float32", "max_model_len": 256}
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    done = cli.invoke(app, ["plan", str(path)])
    assert done.exit_code == 2 and f"error: {path}: cannot run:" in done.output
    assert [line.strip() for line in done.output.splitlines()][1:] == lines[3:]


def test_a_grid_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"name: t\nvariants: [{name: a, model: caf\xe9, engine: echo}]\nbenches: []\n")
    done = cli.invoke(app, ["plan", str(path)])
    assert done.exit_code == 2
    assert done.output.strip() == (f"error: {path}: not UTF-8 text (byte 39: invalid continuation byte); "
                                   "save the grid as UTF-8")


@pytest.mark.parametrize("name, content, message", [
    ("rows.jsonl", b'{"id": 1}\n[1, 2]\n', "{path}:2: a JSON array, not an object (one row per line)"),
    ("rows.jsonl", b'{"id": 1}\n"text"\n', "{path}:2: a JSON string, not an object (one row per line)"),
    ("rows.json", b'[{"id": 1}, 5]', "{path}: row 2 is a JSON number, not an object"),
    ("rows.jsonl", b'{"id": "caf\xe9"}\n', "{path}: not UTF-8 text (byte 11: invalid continuation byte)"),
    ("rows.json", b"[{", "{path}: not JSON (Expecting property name enclosed in double quotes: line 1 column 3"),
    ("rows.parquet", b"PAR1 not really", "{path}: not a readable Parquet file"),
])
def test_local_bench_data_that_is_not_rows_is_named_by_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_local(path)
    assert str(err.value).startswith(message.format(path=path)), str(err.value)
