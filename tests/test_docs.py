"""The examples in README.md and docs/ are run, so that they cannot go stale.

What is checked, page by page (README.md and every docs/**/*.md):

- ```console blocks are run: each `$ ` line is a shell command (a line ending in `\\` goes on
  to the next one), run by bash with `se-onnx` on the PATH, and must exit 0; the lines after it,
  up to the next `$ ` line, are its expected output (stdout and stderr together), compared line
  by line with trailing spaces ignored. In the expected output, a line `...` stands for any
  number of lines and `...` within a line for any text, as in doctest. A command shown without
  output is only checked for its exit status.
- ```python blocks are run with this interpreter and must exit 0.
- A page that runs `se-onnx train` is skipped where PyTorch is not installed.
- A page's blocks run in order, in one fresh folder holding a copy of models/ (the bundled
  samples and the scripts that make data), so a block may use what an earlier block of the same
  page wrote, never what another page wrote.
- Every `se-onnx …` command line in any console, sh or bash block, run or not, must be accepted
  by the command's parser (a renamed or removed option fails here), and every Python block, run
  or not, must compile and use no name it does not define or import.

Marking a block: an HTML comment on the line right before its fence (the site does not show it).

- `<!-- docs-test: skip: REASON -->`: not run, for examples that need a running server, a GPU,
  Docker, a cluster or files the repository does not ship; the REASON says which. The parser
  and name checks above still apply.
- `<!-- docs-test: exit-status -->`: run, but only the exit status is checked, for output that
  depends on the machine (timings); the output shown is then a recorded one.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import symtable
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from se_onnx.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|exit-status)\b(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^(`{3,})\s*([\w-]*)[^\n]*$")
RUN_LANGUAGES = {"console", "python"}
SHELL_LANGUAGES = {"console", "sh", "bash", "shell"}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    mark: str | None  # None, "skip" or "exit-status"

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.language})"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the line before it, if any."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if not opening:
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == opening[1])
        mark = MARKER.search(lines[i - 1]) if i else None
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        found.append(Block(page, i + 1, opening[2], body, mark[1] if mark else None))
        i = end + 1
    return found


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# Console blocks ------------------------------------------------------------------------------


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of a console block."""
    result: list[tuple[str, list[str]]] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            assert not result, f"{block}: output before the first `$ ` line: {lines[i]!r}"
            i += 1
            continue
        command = lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        output = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        while output and not output[-1].strip():
            output.pop()
        result.append((command, output))
    return result


def output_matches(expected: list[str], actual: str) -> bool:
    pattern = "".join(
        r"(?:.*\n)*?" if line.strip() == "..." else ".*".join(map(re.escape, line.rstrip().split("..."))) + r"[ \t]*\n"
        for line in expected
    )
    text = "".join(line.rstrip() + "\n" for line in actual.rstrip("\n").splitlines())
    return re.fullmatch(pattern, text) is not None


def run_console(block: Block, folder: Path, env: dict[str, str]) -> None:
    for command, expected in commands(block):
        done = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{block}: `{command}` exited {done.returncode}:\n{output}"
        if expected and block.mark != "exit-status":
            assert output_matches(expected, output), (
                f"{block}: `{command}` printed:\n{output}\nbut the page shows:\n" + "\n".join(expected)
            )


# Python blocks -------------------------------------------------------------------------------


def undefined_names(source: str) -> set[str]:
    """Names a block reads as globals but never binds or imports (nor are builtins)."""
    table = symtable.symtable(source, "<block>", "exec")
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    bound |= {child.get_name() for child in table.get_children()}  # functions and classes
    missing, tables = set(), [table]
    while tables:
        current = tables.pop()
        tables += current.get_children()
        for symbol in current.get_symbols():
            global_read = symbol.is_global() or current is table
            if symbol.is_referenced() and global_read and not symbol.is_assigned() and not symbol.is_imported():
                missing.add(symbol.get_name())
    return {name for name in missing - bound if not hasattr(builtins, name)}


def run_python(block: Block, folder: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", block.text], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}{done.stderr}"


# The tests -----------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with a copy of models/ (the samples and the scripts that make data), and an
    environment with `se-onnx` and `python` on the PATH running this checkout."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "models", work / "models", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("se-onnx", f'"{sys.executable}" -m se_onnx'), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SE_ONNX_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "120"
    return work, env


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_examples_run(page: Path, workspace: tuple[Path, dict[str, str]]) -> None:
    folder, env = workspace
    runnable = [b for b in blocks(page) if b.language in RUN_LANGUAGES and b.mark != "skip"]
    if not runnable:
        pytest.skip("no examples to run")
    if any("se-onnx train" in b.text for b in runnable) and importlib.util.find_spec("torch") is None:
        pytest.skip("`se-onnx train` needs PyTorch (the train extra)")
    for block in runnable:
        (run_console if block.language == "console" else run_python)(block, folder, env)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_markers_are_known(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("<!--") and "docs-test" in line:
            assert MARKER.search(line), f"{page.name}:{number}: unknown docs-test marker {line.strip()!r}"
            assert number < len(lines) and FENCE.match(lines[number].strip()), (
                f"{page.name}:{number}: a docs-test marker goes on the line right before a fence"
            )
            mark = MARKER.search(line)
            assert mark[1] != "skip" or mark[2], f"{page.name}:{number}: say why a block is skipped"


def se_onnx_invocations(block: Block) -> list[list[str]]:
    """The arguments of each `se-onnx …` command in a shell block, wherever it stands in a line
    as a command (first, after `VAR=value` assignments, or after `&&`, `||`, `;`, `|`)."""
    text = "\n".join(command for command, _ in commands(block)) if block.language == "console" else block.text
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens, at_command = list(lexer), True
        for i, token in enumerate(tokens):
            if at_command and (token == "se-onnx" or token.endswith("/se-onnx")):
                args = []
                for arg in tokens[i + 1 :]:
                    if arg in ("&&", "||", ";", "|", ">", ">>", "<", "&", "2>"):
                        break
                    args.append(arg)
                found.append(args)
            at_command = token in ("&&", "||", ";", "|") or (at_command and re.fullmatch(r"\w+=.*", token) is not None)
    return found


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_command_lines_parse(page: Path) -> None:
    parser = build_parser()
    for block in blocks(page):
        if block.language not in SHELL_LANGUAGES:
            continue
        for args in se_onnx_invocations(block):
            errors = io.StringIO()
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                try:
                    parser.parse_args(args)
                except SystemExit as exit:
                    assert exit.code == 0, f"{block}: se-onnx {shlex.join(args)}: {errors.getvalue().strip()}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_python_blocks_compile(page: Path) -> None:
    for block in blocks(page):
        if block.language == "python":
            compile(block.text, str(block), "exec")
            assert not undefined_names(block.text), f"{block}: undefined names {sorted(undefined_names(block.text))}"


def test_readme_setup_is_what_ci_runs() -> None:
    """The README's set-up block holds the two commands of .ci/run, verbatim."""
    ci = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.startswith(("python3 ", ".venv/bin/python "))
    ]
    setup = next(b for b in blocks(ROOT / "README.md") if b.language == "sh" and "python3 -m venv" in b.text)
    assert ci == setup.text.splitlines()[: len(ci)]


def test_model_config_example_is_valid() -> None:
    from service.config import ModelConfig

    page = ROOT / "docs/serve/repository.md"
    example = next(b for b in blocks(page) if b.language == "json")
    assert ModelConfig.parse(example.text, str(example)).dynamic_batching is not None


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(page.relative_to(ROOT / "docs")) for page in (ROOT / "docs").rglob("*.md")}
    assert {page for page in pages if page not in nav} == set()


def _reference():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs/hooks/reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    return reference


def test_cli_reference_covers_every_option() -> None:
    reference = _reference()
    text = reference.cli_reference()
    _, subcommands = reference.subcommand_parsers()
    for name, sub in subcommands.choices.items():
        section = text.split(f"## `se-onnx {name}`\n")[1].split("\n## ")[0]
        for action in sub._actions:
            for option in () if isinstance(action, argparse._HelpAction) else action.option_strings:
                assert re.search(rf"[`,] ?{re.escape(option)}\b", section), (
                    f"se-onnx {name} {option} is not in the reference"
                )


def test_settings_references() -> None:
    reference = _reference()
    assert "`max_batch_size`" in reference.model_config_reference()
    page = reference.server_settings_reference()
    assert "| `port` | `SE_ONNX_PORT` | `int` | `8000` |" in page and "`SE_ONNX_GRPC_PORT`" in page


def test_readme_links_exist() -> None:
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert [link for link in links if not (ROOT / link).exists()] == []
