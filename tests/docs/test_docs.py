"""Every command the README and docs/*.md show is checked, and the ones that can run here are run.

A command is a line of a ```bash, ```sh or ```console block (console: only the `$ ` lines);
comments are dropped, `\\` continuations joined. Every command is *checked*: an `omk-ray`
command must name a real subcommand and only options it has (the click tree behind
`omk_ray.cli.app`), and be spelt `.venv/bin/omk-ray` (a bare `omk-ray` fails outside an activated
venv); a `make` target must be in the Makefile; a script under jobs/ or benchmarks/ must exist and
take the options shown; every repository path a command names must exist. A block preceded by
`<!-- not run: REASON -->` stops there (GPU, cluster, hub, long runs, placeholders); every other
block is *executed* by `test_unmarked_blocks_run`, command by command, from the repository root
with `runs/` sent to a temporary folder. Inline code and links are checked too: repository paths
(`omk_ray/...`, `tests/...`, `docs/...`) exist, dotted `omk_ray.` names import, links resolve.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from omk_ray.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "console")
NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")
OMK = (".venv/bin/omk-ray",)
REPO_PREFIXES = ("omk_ray/", "tests/", "docs/", "configs/", "jobs/", "benchmarks/")
CLI = typer.main.get_command(app)


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    text: str
    not_run: str | None  # the reason given by the marker before the block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    out, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(`{3,})(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        marker = NOT_RUN.match(lines[start - 1]) if start else None
        out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]), marker and marker.group(1)))
        i = j + 1
    return out


def shell_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang in SHELL]


def commands(block: Block) -> list[list[str]]:
    """The block's commands as argv lists (env assignments first, as the shell would see them)."""
    lines = block.text.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined, buffer = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    out = []
    for line in joined:
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def program(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(env assignments, the rest): `A=1 B=2 cmd ...`, and `export A=1` as an assignment alone."""
    env, rest = {}, list(argv)
    if rest and rest[0] == "export":
        rest = rest[1:]
    while rest and re.match(r"^[A-Z_][A-Z0-9_]*=", rest[0]):
        key, _, value = rest.pop(0).partition("=")
        env[key] = value
    return env, rest


def omk_args(rest: list[str]) -> list[str] | None:
    """The arguments after the omk-ray program, or None when `rest` is not an omk-ray command."""
    if rest and rest[0] in OMK:
        return rest[1:]
    if rest[:3] == [".venv/bin/python", "-m", "omk_ray"]:
        return rest[3:]
    return None


def click_command(args: list[str]):
    """(the leaf click command, its subcommand path, the remaining args) or an AssertionError."""
    cmd, path, rest = CLI, [], list(args)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in cmd.commands, f"`omk-ray {' '.join(path + [name])}`: no such subcommand"
        cmd, path = cmd.commands[name], path + [name]
    return cmd, path, rest


def option_names(cmd) -> set[str]:
    names = {"--help"}
    for param in cmd.params:
        names.update(o for o in param.opts + param.secondary_opts if o.startswith("-"))
    return names


def used_options(args: list[str]) -> list[str]:
    out = []
    for token in args:
        token = token.strip("[]")
        if re.match(r"^--?[A-Za-z]", token):
            out.append(token.split("=", 1)[0])
    return out


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def repo_paths(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        token = token.strip("[]").split("=", 1)[-1]
        if token.startswith(REPO_PREFIXES) or token == "ray_cluster.yaml":
            out.append(token)
    return out


def exists(path: str) -> bool:
    return bool(list(ROOT.glob(path.rstrip("/")))) if any(c in path for c in "*?") else (ROOT / path).exists()


def check_command(argv: list[str]) -> list[str]:
    """What is wrong with one shown command (empty when nothing)."""
    problems = []
    env, rest = program(argv)
    if not rest:
        return problems  # `export VAR=...` alone
    if rest[0] == "omk-ray":
        problems.append("bare `omk-ray` works only in an activated venv: write `.venv/bin/omk-ray`")
        rest = [OMK[0], *rest[1:]]
    args = omk_args(rest)
    if args is not None:
        try:
            cmd, path, tail = click_command(args)
        except AssertionError as err:
            return problems + [str(err)]
        if hasattr(cmd, "commands") and "--help" not in tail:
            problems.append(f"`omk-ray {' '.join(path)}` needs a subcommand")
        known = option_names(cmd)
        problems += [f"`omk-ray {' '.join(path)}` has no option {o}" for o in used_options(tail) if o not in known]
    elif rest[0] == "make":
        problems += [f"no make target {t!r}" for t in rest[1:] if "=" not in t and t not in make_targets()]
    elif re.match(r"^(\.venv/bin/)?python3?$", rest[0]) and len(rest) > 1 and rest[1].endswith(".py"):
        script = ROOT / rest[1]
        if not script.is_file():
            problems.append(f"no script {rest[1]}")
        else:
            source = "".join(p.read_text() for p in script.parent.glob("*.py"))
            problems += [f"{rest[1]} has no option {o}" for o in used_options(rest[2:])
                         if f'"{o}"' not in source and o != "--help"]
    problems += [f"no such path in the repository: {p}" for p in repo_paths(rest) if not exists(p)]
    return problems


def all_commands() -> list[tuple[str, list[str]]]:
    return [(b.where, argv) for b in shell_blocks() for argv in commands(b)]


# --- static checks -------------------------------------------------------------------------

def test_the_docs_show_commands():
    found = all_commands()
    assert len(found) >= 40, f"only {len(found)} commands found: is the block parser broken?"
    assert any(omk_args(program(a)[1]) == ["plan", "configs/demo.yaml"] for _, a in found)


@pytest.mark.parametrize("where,argv", [pytest.param(w, a, id=f"{w} {shlex.join(a[:3])}") for w, a in all_commands()])
def test_every_shown_command_checks(where, argv):
    problems = check_command(argv)
    assert not problems, f"{where}: `{shlex.join(argv)}`: " + "; ".join(problems)


def test_the_checker_catches_what_it_should():
    """The checks can fail: each of these is refused for the reason given."""
    bad = {
        "omk-ray plan configs/demo.yaml": "bare `omk-ray`",
        ".venv/bin/omk-ray plann configs/demo.yaml": "no such subcommand",
        ".venv/bin/omk-ray run configs/demo.yaml --result runs/x": "has no option --result",
        ".venv/bin/omk-ray toy": "needs a subcommand",
        ".venv/bin/omk-ray plan configs/nope.yaml": "no such path",
        "make tests": "no make target",
        "python jobs/ablation_grid.py configs/demo.yaml --gpu 8": "has no option --gpu",
    }
    for line, reason in bad.items():
        problems = check_command(shlex.split(line))
        assert any(reason in p for p in problems), (line, problems)
    assert check_command(shlex.split(".venv/bin/omk-ray compare R --baseline b [--variants v ...] [--format card]")) == []


def test_not_run_markers_give_a_reason_and_precede_a_block():
    for page in PAGES:
        lines = page.read_text().splitlines()
        for n, line in enumerate(lines):
            if line.startswith("<!-- not run"):
                assert NOT_RUN.match(line), f"{page.name}:{n + 1}: write `<!-- not run: REASON -->`"
                assert n + 1 < len(lines) and lines[n + 1].startswith("```"), f"{page.name}:{n + 1}: marker not before a block"


INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def inline_spans(page: Path) -> list[str]:
    text = re.sub(r"^(`{3,}).*?^\1", "", page.read_text(), flags=re.M | re.S)  # outside fenced blocks
    return INLINE.findall(text)


# Folders a reader would take for the repository's that a clone does not have (a workstation's shared
# fixtures): a path starting with one is checked like a repository path, and fails. (What a command
# writes, runs/ or demo_out/, is named as its output, not checked.)
NOT_IN_A_CLONE = ("shared/", "fixtures/")


def tracked() -> list[str] | None:
    """The files a clone has (git's index), or None outside a git checkout."""
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.splitlines() if done.returncode == 0 else None


def in_a_clone(path: str, files: list[str] | None) -> bool:
    """`path` (a file, a folder or a glob) is in a fresh clone, not only on this disk."""
    if files is None:
        return exists(path)
    path = path.rstrip("/")
    if any(c in path for c in "*?"):
        import fnmatch

        return any(fnmatch.fnmatch(f, path) or fnmatch.fnmatch(f, path + "/*") for f in files)
    return path in files or any(f.startswith(path + "/") for f in files)


def test_paths_named_in_the_text_exist():
    missing, files = [], tracked()
    for page in PAGES:
        for span in inline_spans(page):
            for token in span.split():
                token = token.strip("(),;:")
                if token.startswith(REPO_PREFIXES + NOT_IN_A_CLONE) and not re.search(r"[<>{}]|\.\.\.|\bDIR\b", token):
                    if not in_a_clone(token.split(":")[0], files):
                        missing.append(f"{page.relative_to(ROOT)}: `{token}`")
    assert not missing, "paths the docs name that a clone does not have:\n" + "\n".join(sorted(set(missing)))


def test_a_path_only_on_this_disk_is_not_in_a_clone():
    files = tracked()
    assert files is not None and in_a_clone("tests/fixtures/lm-eval-logs/", files)
    assert not in_a_clone("shared/fixtures/lm-eval-logs/", files)
    assert not in_a_clone("omk_ray/__pycache__", files)  # on this disk, never in a clone


def test_python_names_in_the_text_exist():
    missing = []
    for page in PAGES:
        for span in inline_spans(page):
            name = span.split("(")[0]
            if not re.fullmatch(r"omk_ray(\.\w+)+", name):
                continue
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                    break
                except ImportError:
                    continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(f"{page.relative_to(ROOT)}: `{name}`")
    assert not missing, "names the docs use that do not exist:\n" + "\n".join(sorted(set(missing)))


def test_grid_reference_lists_every_key():
    """docs/grid.md names every field of the grid's pydantic models, so the reference cannot drift."""
    from omk_ray import config

    models = [config.GridConfig, config.Recipe, config.VariantSpec, config.EngineArgs, config.DeclaredFacts,
              config.BenchSpec, config.FarmSpec, config.CanarySpec, config.StagesSpec]
    from omk_ray.variants.spec import BUILD_KINDS, GGUFOptions  # a build block: one model per kind of build

    text = (ROOT / "docs/grid.md").read_text()
    missing = [f"{m.__name__}.{name}" for m in [*models, *BUILD_KINDS, GGUFOptions] for name, field in m.model_fields.items()
               if not field.exclude and f"`{name}`" not in text]
    assert not missing, f"docs/grid.md does not list {missing}"


def test_links_resolve():
    broken = []
    for page in PAGES:
        for target, _ in LINK.findall(page.read_text()):
            if not target.startswith("http") and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_layout_map_names_what_is_there():
    """Each entry of the README's layout map (final names: plugins.py, _data/, exits.py ...) exists."""
    layout = next(b for b in blocks(ROOT / "README.md") if b.text.startswith("omk_ray/"))
    missing, parent = [], ""
    for line in layout.text.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        name = m.group(2) if m else ""
        if not m or not re.fullmatch(r"[\w.<>/-]+", name):
            continue
        if not m.group(1):
            parent = name if name.endswith("/") else ""
            path = name
        elif len(m.group(1)) == 2 and parent == "omk_ray/":
            path = parent + name
        else:
            continue
        if "<area>" in path:
            areas = "config variants engines farm results analysis benches toy llamacpp jobs docs".split()
            missing += [f"tests/{a}/" for a in areas if not (ROOT / "tests" / a).is_dir()]
        elif not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"the README's layout names what is not there: {missing}"


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert 150 <= len(text.splitlines()) <= 260
    assert text.count("<!-- demo-card:begin -->") == 1 and text.count("<!-- demo-card:end -->") == 1
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"


# --- executed -------------------------------------------------------------------------------

def test_help_of_every_subcommand():
    runner = CliRunner()

    def walk(cmd, path):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(CLI, [])


def run_block(block: Block, tmp: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Each command of the block from the repository root, `runs/` sent to `tmp`, the venv's
    programs as this interpreter (`.venv/bin/omk-ray` is `python -m omk_ray`)."""
    done = []
    for argv in commands(block):
        assignments, rest = program(argv)
        values = {"PWD": str(ROOT), **env}
        for key, value in assignments.items():
            env[key] = os.path.expandvars(value.replace("$PWD", str(ROOT)).replace("$PYTHONPATH", env.get("PYTHONPATH", "")))
        if not rest:
            continue
        args = omk_args(rest)
        if args is not None:
            rest = [sys.executable, "-m", "omk_ray", *args]
        elif rest[0] == ".venv/bin/python":
            rest = [sys.executable, *rest[1:]]
        else:
            pytest.fail(f"{block.where}: `{shlex.join(argv)}` cannot be run here: mark the block `<!-- not run: ... -->`")
        rest = [str(tmp / t) if t.startswith("runs/") else t for t in rest]
        result = subprocess.run(rest, cwd=ROOT, env={**os.environ, **values, **env}, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{block.where}: `{shlex.join(argv)}` exited {result.returncode}:\n{result.stderr[-3000:]}"
        done.append(result)
    return done


def unmarked() -> list[Block]:
    return [b for b in shell_blocks() if b.not_run is None]


@pytest.mark.slow
@pytest.mark.parametrize("block", unmarked(), ids=lambda b: b.where)
def test_unmarked_blocks_run(block, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    results = run_block(block, tmp_path, env)
    assert results, f"{block.where}: nothing ran"
    out = "\n".join(r.stdout for r in results)
    if "example_plugins/grid.yaml" in block.text:  # docs/adding-an-engine.md: the plug-ins through a grid
        assert "| wordcount (40) | 100.00% ±0.00 (40/40) | 87.50% ±5.30 (35/40) | −12.50pp (not significant; below MDE) |" in out, out[-3000:]
    if "--variant toy-hf --variant max" in block.text:  # the README's tour: plan, run, status, compare
        plan, _, status, card = (r.stdout for r in results)
        assert "3200 of 3200 samples to generate" in plan, plan
        for variant in ("toy-hf", "max"):  # 40 expected, 40 done, 0 missing, 0 failed, canary passed
            assert re.search(variant + r"\s*│\s*toy\s*│\s*40\s*│\s*40\s*│\s*0\s*│\s*0\s*│\s*passed", status), status
        assert "## Evaluation: max vs toy-hf" in card and "| toy (40)° |" in card, card[-3000:]
        assert "toy: max ran on engine vllm 0.32.0 float32 on cpu, baseline toy-hf on transformers" in card, card[-3000:]
        assert (tmp_path / "runs/tour/report/card.md").is_file()
