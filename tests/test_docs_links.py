"""The README's and docs/'s relative links point at files that exist and at headings that exist (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_rule_matches_github(tmp_path: Path):
    md = tmp_path / "page.md"
    md.write_text(
        "### At 288x384 on an H100: the CPU path, the device path\n## Not yet measured / open\n"
        "### preset=gpu, seed by seed\n```bash\n# not a heading\n```\n## Runs\n## Runs\n",
        encoding="utf-8",
    )
    # the anchors GitHub gives these headings
    assert anchors(md) == {
        "at-288x384-on-an-h100-the-cpu-path-the-device-path", "not-yet-measured--open", "presetgpu-seed-by-seed",
        "runs", "runs-1",
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # commands, not links
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path) if path else doc
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no such heading")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
