"""The wire contract lives in the repository: ``docs/protocol.md``.

Code, docs, examples and the README cite it (``protocol.md §3.2`` in code, a relative link in
docs) and nothing outside the repository, so every reference a reader meets can be followed.
These tests keep it that way: no mention of a design document that is not shipped, every
``§n`` names a section the page has, and every link into a doc page names a heading it has.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
#: Where a reader meets references: the shipped package, its docs, examples and README.
SCANNED = (
    ROOT / "docs",
    ROOT / "watchroutes",
    ROOT / "examples",
    ROOT / "tests",
    ROOT / "benchmarks",
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "dev.py",
)
#: The top-level sections, numbered as every reference expects them.
SECTIONS = (
    "1",
    "2",
    "3",
    *(f"3.{n}" for n in range(1, 7)),
    "4",
    "5",
    *(f"5.{n}" for n in range(1, 7)),
    "6",
    "7",
)

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
_NUMBERED = re.compile(r"^(\d+(?:\.\d+)?)\.?\s")
_SECTION_REF = re.compile(r"protocol\.md\s*§\s*(\d+(?:\.\d+)?)")
_DOC_LINK = re.compile(r"\]\((?P<page>[\w./-]*\.md)?#(?P<anchor>[^)\s]+)\)")


def _files() -> list[Path]:
    files: list[Path] = []
    for base in SCANNED:
        candidates = [base] if base.is_file() else sorted(base.rglob("*"))
        for path in candidates:
            if (
                path.is_file()
                and "__pycache__" not in path.parts
                and path.suffix != ".pyc"
                and path != Path(__file__).resolve()  # it names what it looks for
            ):
                files.append(path)
    return files


def _headings(path: Path) -> list[str]:
    headings: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is not None:
            headings.append(match[2])
    return headings


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _sections() -> set[str]:
    numbers = set()
    for heading in _headings(PROTOCOL):
        match = _NUMBERED.match(heading)
        if match is not None:
            numbers.add(match[1])
    return numbers


def test_nothing_cites_a_design_document_outside_the_repository() -> None:
    offenders = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary asset
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if "DESIGN" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "cite docs/protocol.md instead:\n" + "\n".join(offenders)


def test_the_protocol_page_keeps_its_section_numbers() -> None:
    assert set(SECTIONS) <= _sections()


def test_every_section_reference_names_a_section() -> None:
    sections = _sections()
    dangling = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in _SECTION_REF.finditer(text):
            if match[1] not in sections:
                dangling.append(f"{path.relative_to(ROOT)}: protocol.md §{match[1]}")
    assert not dangling, "no such section in docs/protocol.md:\n" + "\n".join(dangling)


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_links_into_the_protocol_and_deployment_pages_name_a_heading(page: Path) -> None:
    """Links with an anchor into protocol.md and deployment.md (and within those pages)."""
    checked = {"protocol.md", "deployment.md"}
    broken = []
    for match in _DOC_LINK.finditer(page.read_text(encoding="utf-8")):
        target = Path(match["page"]).name if match["page"] else page.name
        if target not in checked:
            continue
        anchors = {_anchor(h) for h in _headings(ROOT / "docs" / target)}
        if match["anchor"] not in anchors:
            broken.append(f"{target}#{match['anchor']}")
    assert not broken, f"{page.name} links to headings that do not exist: {broken}"
