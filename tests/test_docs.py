"""Every Python code block in README.md and docs/*.md runs as a test (STYLE practice 13).

Fence markers (the info string after the opening backticks):

``python``
    Executed, each block alone, in a fresh interpreter (``python -W error``, the counterpart
    of pyproject's ``filterwarnings = error``), with a working directory of its own. It must
    exit with status 0 within ``TIMEOUT`` seconds. Blocks are standalone: they import what
    they use and share nothing with other blocks.
``python no-run``
    For blocks that cannot run alone (they need a server on a fixed port, a browser, or are a
    fragment of a larger program): only compiled, so they stay valid Python.
``python pytest``
    Written to a test file and run with ``pytest -W error`` in a fresh interpreter; it must
    collect at least one test and pass. The installed ``watchroutes.testing`` plugin provides
    its fixtures, as it does in an application's test suite.
``text output``
    Directly after an executed ``python`` block: the block's standard output must equal this
    block's text exactly (the streams shown in the docs are what the code writes).

Any other info string that starts with ``python`` is an error, so a typo cannot silently turn
a block into one that is never run. Test ids are ``file:line`` of the opening fence, and
tracebacks of a failing block point at the Markdown file's own line numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
#: Wall-clock seconds one block may take (the slowest starts a real server on 127.0.0.1).
TIMEOUT = 60.0
MARKERS = ("", "no-run", "pytest")
_FENCE = re.compile(r"^(?P<ticks>`{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    expected_output: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def marker(self) -> str:
        return self.info.removeprefix("python").strip()

    def padded(self) -> str:
        """The code preceded by blank lines, so that its line numbers are the file's."""
        return "\n" * self.line + self.code


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``; ``text output`` blocks attach to the block before."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i].strip())
        if opening is None:
            i += 1
            continue
        ticks, info = opening["ticks"], opening["info"].strip()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path}:{start + 1}: unterminated code block")
        i += 1
        code = "\n".join(body) + "\n"
        if info == "text output":
            previous = blocks[-1] if blocks else None
            if previous is None or not previous.info.startswith("python"):
                raise AssertionError(f"{path}:{start + 1}: an output block follows no code")
            blocks[-1] = Block(previous.path, previous.line, previous.info, previous.code, code)
            continue
        blocks.append(Block(path, start + 1, info, code))
    return blocks


def python_blocks() -> list[Block]:
    return [b for p in DOCS for b in fenced_blocks(p) if b.info.startswith("python")]


BLOCKS = python_blocks()


def _run(args: list[str], cwd: Path, block: Block) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    try:
        return subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: did not finish within {TIMEOUT:.0f} s")


def test_every_doc_page_is_found() -> None:
    names = {p.name for p in DOCS}
    expected = {"README.md", "index.md", "quickstart.md", "concepts.md", "sse.md"}
    expected |= {"jsonlines.md", "testing.md", "errors.md"}
    assert expected <= names
    assert sum(1 for b in BLOCKS if b.marker == "") >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_doc_block(block: Block, tmp_path: Path) -> None:
    if block.marker not in MARKERS:
        pytest.fail(f"{block.id}: unknown marker {block.info!r}; use one of {MARKERS}")
    # Every block, whatever its marker, must at least be valid Python.
    compile(block.code, block.id, "exec", dont_inherit=True)
    if block.marker == "no-run":
        assert block.expected_output is None, f"{block.id}: a no-run block has no output"
        return
    if block.marker == "pytest":
        script = tmp_path / "test_block.py"
        script.write_text(block.padded(), encoding="utf-8")
        args = [sys.executable, "-W", "error", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        args += ["-W", "error", "--rootdir", str(tmp_path), str(script)]
    else:
        script = tmp_path / "block.py"
        script.write_text(block.padded(), encoding="utf-8")
        args = [sys.executable, "-W", "error", str(script)]
    result = _run(args, tmp_path, block)
    if result.returncode != 0:
        pytest.fail(
            f"{block.id} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )
    if block.expected_output is not None:
        assert result.stdout == block.expected_output, f"{block.id}: output differs"
