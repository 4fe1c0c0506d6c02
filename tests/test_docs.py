"""The docs work as written: every command and example in README.md and docs/*.md is run.

Each fenced block says what it is in its info string: ``sh`` (commands, run), ``console``
(a transcript: the ``$ `` lines are run), ``python`` (run as a script), ``text`` (output or
a diagram, never run); ``illustrative`` after the language marks a block that cannot run in
a test (a process killed by name, a service unit, a path outside the repository). The blocks
of one file run in order in one temporary directory that looks like the repository's root
(its files linked in, ``data/`` its own), with the walk-through's ports 12345-12349 replaced
by free ones, stdin at end of input, and a deadline for each block.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from position_distributor import Config, Limits

from .procs import Cluster, NodeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"sh", "console", "python"}
KNOWN = RUN | {"text", "proto"}
DEADLINE = 60.0  # seconds for one block; a node whose input ends stops in well under one
DOC_PORTS = range(12345, 12350)
# Never linked into the scratch directory: what a block may create, and the VCS.
NOT_LINKED = {"data", ".git", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

sys.path.insert(0, str(ROOT / "tools"))
import cli_doc  # noqa: E402


@dataclass(frozen=True)
class Block:
    """One fenced block of a doc: where it starts, its info string and its text."""

    path: Path
    line: int
    language: str
    flags: tuple[str, ...]
    body: str

    @property
    def runs(self) -> bool:
        return self.language in RUN and "illustrative" not in self.flags

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<info>[^`]*)$")


def blocks(path: Path) -> Iterator[Block]:
    """The fenced blocks of a Markdown file, in order (indented ones in lists too)."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        words = opening["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j].removeprefix(indent))
            j += 1
        assert j < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: fence never closed"
        yield Block(
            path, i + 1, words[0] if words else "", tuple(words[1:]), "\n".join(body) + "\n"
        )
        i = j + 1


def commands(block: Block) -> str:
    """The shell script a block runs: an ``sh`` block as it is, a transcript's ``$ `` lines."""
    if block.language == "sh":
        return block.body
    script: list[str] = []
    continued = False
    for line in block.body.splitlines():
        if line.startswith("$ ") or continued:
            script.append(line.removeprefix("$ "))
            continued = line.endswith("\\")
    return "\n".join(script) + "\n"


def scratch_root(tmp_path: Path) -> Path:
    """A directory that looks like the repository's root: its entries linked, no data."""
    assert (ROOT / ".venv" / ".installed").exists(), "the docs run in .venv: make install first"
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED | {"pyproject.toml"}:
            (work / entry.name).symlink_to(entry)
    # A copy older than the install stamp: make uses the venv these tests run in, as it is,
    # instead of reinstalling into it (pyproject.toml may be newer after a rebase).
    copy = work / "pyproject.toml"
    copy.write_bytes((ROOT / "pyproject.toml").read_bytes())
    os.utime(copy, (0, 0))
    return work


def run_block(block: Block, work: Path, ports: dict[int, int]) -> subprocess.CompletedProcess[str]:
    """Run one block in ``work`` with the doc ports mapped, stdin closed, within the deadline."""
    text = commands(block) if block.language != "python" else block.body
    text = re.sub(r"\b(1234[5-9])\b", lambda m: str(ports[int(m[1])]), text)
    if block.language == "python":
        script = work / f"block_{block.line}.py"
        script.write_text(text)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", text]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PORT=str(ports[12345]))
    env.pop("PD_SECRET_FILE", None)
    env.pop("MAKEFLAGS", None)
    proc = subprocess.Popen(
        argv,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a deadline stops all it started
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{block.where()}: still running after {DEADLINE:g}s\n{text}\n{out}\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_block_says_what_it_is(doc: Path) -> None:
    """Every fenced block names a known language, so no command escapes the test unmarked."""
    unknown = [
        f"{b.where()}: {b.language or '(no info string)'}"
        for b in blocks(doc)
        if b.language not in KNOWN
    ]
    assert unknown == [], "blocks without a known info string (sh, console, python, text...)"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_command_and_example_runs_as_written(doc: Path, tmp_path: Path) -> None:
    """Every runnable block of the doc exits 0 when run as written, in order, in its deadline."""
    work = scratch_root(tmp_path)
    ports = {port: free_port() for port in DOC_PORTS}
    for block in blocks(doc):
        if not block.runs:
            continue
        result = run_block(block, work, ports)
        assert result.returncode == 0, (
            f"{block.where()}: exit status {result.returncode}\n--- block:\n{block.body}"
            f"--- stdout:\n{result.stdout[-3000:]}\n--- stderr:\n{result.stderr[-3000:]}"
        )
        assert "Traceback" not in result.stderr, f"{block.where()}:\n{result.stderr}"


def test_the_python_api_example_prints_what_the_doc_shows(tmp_path: Path) -> None:
    """docs/api.md's example prints its documented lines, numbers aside, and ends in time."""
    doc = ROOT / "docs" / "api.md"
    found = list(blocks(doc))
    [index] = [i for i, b in enumerate(found) if b.language == "python"]
    example, shown = found[index], found[index + 1]
    assert shown.language == "text"
    result = run_block(example, scratch_root(tmp_path), {port: free_port() for port in DOC_PORTS})

    def masked(text: str) -> list[str]:
        return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text).splitlines()

    assert result.returncode == 0, result.stderr
    assert masked(result.stdout) == masked(shown.body)


def test_cli_md_is_what_the_parsers_print_today() -> None:
    """docs/cli.md's generated --help blocks match the parsers (else: run make docs)."""
    text = cli_doc.CLI_MD.read_text()
    assert text.count("<!-- generated: ") >= 2
    assert cli_doc.render(text) == text, "docs/cli.md is stale: run make docs"


def test_every_option_of_the_command_line_is_documented_in_cli_md() -> None:
    """Every option in --help is also named in docs/cli.md's own text, outside the generated
    --help (so a new flag gets a note, not only its help line)."""
    text = cli_doc.CLI_MD.read_text()
    generated = re.sub(r"<!-- generated: .*?<!-- end generated -->", "", text, flags=re.DOTALL)
    help_text = cli_doc.generated("python -m position_distributor --help")
    options = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    missing = sorted(o for o in options if o not in generated)
    assert missing == [], f"options with no note in docs/cli.md: {missing}"


_LINK = re.compile(r"\]\((?!https?://|mailto:)(?P<target>[^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings."""
    anchors = set()
    for block_free in re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL).splitlines():
        if block_free.startswith("#"):
            title = block_free.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_link_between_the_docs_leads_somewhere(doc: Path) -> None:
    """Every relative link of a doc names a file that exists, and a heading that exists."""
    broken = []
    for found in _LINK.finditer(doc.read_text()):
        target = found["target"]
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        missing_heading = anchor and path.suffix == ".md" and anchor not in _anchors(path)
        if not path.exists() or missing_heading:
            broken.append(target)
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links {broken}"


class MadeNode(NodeProcess):
    """A node started by a README ``make run ...`` line, in a scratch repository root.

    ``make`` stays the parent of the node's process; a kill -9 goes to the node itself, by
    its PID (make's child), as the README's ``kill -9`` does.
    """

    def __init__(self, name: str, line: str, work: Path, port: int, ports: dict[int, int]):
        super().__init__(name, port, data_dir=work / "data", env={"PORT": str(ports[12345])})
        mapped = re.sub(r"\b(1234[5-9])\b", lambda m: str(ports[int(m[1])]), line)
        self.argv = ["make", "--no-print-directory", "-C", str(work), *shlex.split(mapped)[1:]]

    @property
    def command(self) -> list[str]:
        return self.argv

    def kill(self) -> None:
        """kill -9 of the node (make's child), by PID; make then exits too."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        [child] = children.split()
        os.kill(int(child), signal.SIGKILL)
        self.proc.wait(timeout=10)


def walk_through_commands() -> list[str]:
    """The commands of the README's walk-through that start nodes, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    found = [b for b in blocks(ROOT / "README.md") if b.runs and b.body.strip() in section]
    return [line for b in found for line in b.body.splitlines() if line.strip()]


def readme_output(first_line: str) -> list[str]:
    """The lines of the README's walk-through output block from ``first_line`` to a blank."""
    for block in blocks(ROOT / "README.md"):
        lines = block.body.splitlines()
        if block.language == "text" and first_line in lines:
            start = lines.index(first_line)
            end = lines.index("", start) if "" in lines[start:] else len(lines)
            return lines[start + 1 : end]
    raise AssertionError(f"no README output block with {first_line!r}")


@pytest.mark.slow
def test_the_readme_walk_through_runs_as_written(tmp_path: Path) -> None:
    """The README's three ``make run`` lines make a mesh that starts with no warning and
    prints what the README shows; after a kill -9, the same command brings the node back
    with what it missed."""
    lines = walk_through_commands()
    assert [line.split()[:2] for line in lines] == [["make", "run"]] * 3, lines
    work = scratch_root(tmp_path)
    ports = {port: free_port() for port in DOC_PORTS}
    cluster = Cluster(tmp_path)
    names = ["strategy_1", "strategy_2", "strategy_3"]
    try:
        t1, t2, t3 = (
            MadeNode(name, line, work, ports[12345 + i], ports)
            for i, (name, line) in enumerate(zip(names, lines, strict=True))
        )
        for node in (t1, t2, t3):
            node.cluster = cluster
            cluster.nodes[node.name] = node
            node.start()
            node.wait_for_log(f"{node.name} listening on 127.0.0.1:{node.port}")
        t1.type("AAPL 100")
        t2.type("MSFT -50")
        t3.type("BTC 500", "AAPL 25")
        view = {
            ("strategy_1", "AAPL"): 100.0,
            ("strategy_2", "MSFT"): -50.0,
            ("strategy_3", "BTC"): 500.0,
            ("strategy_3", "AAPL"): 25.0,
        }
        cluster.wait_for_view(view, [t1, t2, t3])

        def masked(lines: list[str]) -> list[str]:
            text = "\n".join(lines)
            text = re.sub(r"\b\d{19}\b", "TS", text)
            text = re.sub(r"127\.0\.0\.1:\d+", "ADDR", text)
            return re.sub(r"\d+\.\ds ago", "Ns ago", text).splitlines()

        assert masked(t1.command_output("positions", "Current positions")) == masked(
            readme_output("Current positions")
        )
        assert t1.command_output("exposure", "Exposure") == readme_output("Exposure")
        assert masked(t1.command_output("peers", "Peers")) == masked(readme_output("Peers"))
        for node in (t1, t2, t3):  # a new cluster's first start is calm
            node.sync_stderr()
            loud = [line for line in node.errors if re.search(r"\| (WARNING|ERROR|CRITICAL)", line)]
            assert loud == [], node.describe()

        t2.kill()
        t3.wait_for_log("connection with strategy_2")
        t1.type("AAPL -30")
        view[("strategy_1", "AAPL")] = 70.0
        cluster.wait_for_view(view, [t1, t3])
        t2.start()  # the same command again
        t2.wait_for_view(view)
        t3.wait_for_log("connected to strategy_2", start=len(t3.errors_since()) - 1)
        for node in (t3, t2, t1):
            assert node.stop() == 0, node.describe()
    finally:
        cluster.close()


def test_every_module_of_the_package_has_a_row_in_the_parts_of_architecture_md() -> None:
    """docs/architecture.md's table of parts names every module of the package."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    parts = text.split("## The parts", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([\w.]+\.py)`", parts, re.MULTILINE))
    modules = {p.name for p in (ROOT / "position_distributor").glob("*.py")}
    missing = sorted(modules - rows - {"__init__.py", "position_pb2.py"})
    assert missing == [], f"modules without a row in docs/architecture.md#the-parts: {missing}"


def test_api_md_names_every_field_of_config_and_limits() -> None:
    """docs/api.md's Config signature lists Config's fields in order, and its Limits
    paragraph names every field of Limits."""
    text = (ROOT / "docs" / "api.md").read_text()
    signature = text.split("**`Config(", 1)[1].split(")`**", 1)[0]
    documented = [part.split("=")[0].strip() for part in signature.replace("\n", " ").split(",")]
    assert documented == [f.name for f in dataclasses.fields(Config)]
    limits = text.split("**`Limits(...)`**", 1)[1].split("\n\n", 1)[0]
    missing = [f.name for f in dataclasses.fields(Limits) if f"`{f.name}`" not in limits]
    assert missing == [], f"Limits fields not in docs/api.md: {missing}"


def logged_texts() -> Iterator[tuple[str, str]]:
    """Each WARNING, ERROR and CRITICAL line the package can log whose text is a literal:
    where it is, and its text with each ``{}`` placeholder as ``{}``."""
    for path in sorted((ROOT / "position_distributor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"warning", "error", "critical"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            target = node.func.value  # logger.error(...) or logger.opt(...).error(...)
            if isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute):
                target = target.func.value
            if isinstance(target, ast.Name) and target.id == "logger":
                yield f"{path.relative_to(ROOT)}:{node.lineno}", node.args[0].value


def test_every_warning_and_error_the_node_logs_is_explained_in_the_docs() -> None:
    """Each WARNING/ERROR/CRITICAL text of the package is in the docs (the runbook of
    operations.md, or the page of its feature): every run of three words or more between
    its placeholders is found there (its longest run, for a short text)."""
    docs = "\n".join(path.read_text() for path in DOCS)
    missing = []
    for where, text in logged_texts():
        runs = [run.strip(" :;,.()") for run in re.split(r"\{[^}]*\}", text)]
        wordy = [run for run in runs if len(run.split()) >= 3] or [max(runs, key=len)]
        if not all(run in docs for run in wordy):
            missing.append(f"{where}: {text!r}")
    assert missing == [], (
        "log lines with no row in docs/operations.md#runbook-every-warning-and-error:\n"
        + "\n".join(missing)
    )
