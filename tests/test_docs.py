"""The README and docs/ stand on their own: no pointer outside the repository, every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_YET_CHECKED: set[str] = set()
DOCS = [
    ROOT / "README.md",
    *(p for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in NOT_YET_CHECKED),
]
OUTSIDE = re.compile(r"\.\./shared|shared/docs")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(doc: Path) -> None:
    hits = [
        f"line {n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, f"{doc.name} points outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor of the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_the_readme_links_the_methods_page() -> None:
    assert "](docs/methods.md)" in (ROOT / "README.md").read_text()


def test_every_cited_methods_section_exists() -> None:
    """Code and docs cite docs/methods.md by section ("methods.md §3.3"): each cited number is a heading there."""
    headings = set(
        re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", (ROOT / "docs" / "methods.md").read_text(), re.M)
    )
    packages = ("dskd_core", "dskd_cli", "dskd_client", "api", "worker", "bench", "scripts", "tests")
    sources = [*(p for pkg in packages for p in (ROOT / pkg).rglob("*.py")), *DOCS]
    cited = {
        (str(path.relative_to(ROOT)), number)
        for path in sources
        for number in re.findall(r"methods\.md[^§\n]{0,20}§(\d+(?:\.\d+)?)", path.read_text())
    }
    assert len(cited) >= 10  # the pattern still finds the citations
    missing = sorted(c for c in cited if c[1] not in headings)
    assert not missing, f"sections cited but not in docs/methods.md: {missing}"
