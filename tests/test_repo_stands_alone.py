"""The repository stands alone: what it ships cites its own docs, never files that live outside it.

Specifications written for the developers (EMO.md, EVAL.md, DEEPSPEED.md, SLURM.md, CONTAINERS.md in a
shared folder beside the checkout) are not part of the repository; whatever a user needs from them is in
docs/ in our words. This scans every file git knows (tracked or new, not ignored) outside tests/ and .ci/
and fails on a citation of such a file, and on a `docs/X.md` (or `docs/X.md, *Section*`) citation that
points at a doc or a section that does not exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC_NAMES = ("EMO", "EVAL", "DEEPSPEED", "SLURM", "CONTAINERS")
# A spec file by name (not part of a longer name such as DEMO.md), or any path into the shared folder.
SPEC_FILE = re.compile(r"(?<![\w.-])(?:%s)\.md\b" % "|".join(SPEC_NAMES))
OUTSIDE_PATH = re.compile(r"shared/reference|\.\./shared\b|/work/shared\b")
DOC_CITATION = re.compile(r"\bdocs/([\w.-]+\.md)(?:, \*([^*\n]+)\*)?")
MD_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.md)\b")  # a relative path to a Markdown file
SKIP_TOP = ("tests/", ".ci/")


def repo_files() -> list[str]:
    """Tracked and new (not ignored) files, relative to the repository root."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist): walk the tree
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [f for f in out.splitlines() if f and (ROOT / f).is_file()]


def shipped_texts() -> dict[str, str]:
    texts = {}
    for rel in repo_files():
        if rel.startswith(SKIP_TOP):
            continue
        try:
            texts[rel] = (ROOT / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # binary files cite nothing
            continue
    return texts


def external_citations(text: str, own_basenames: set[str]) -> list[str]:
    """Citations in `text` of files outside the repository: a spec name the repository has no file of, or
    a path into the shared folder."""
    found = [m.group(0) for m in SPEC_FILE.finditer(text) if m.group(0) not in own_basenames]
    return found + [m.group(0) for m in OUTSIDE_PATH.finditer(text)]


def doc_sections(doc: str) -> list[str]:
    """The names a citation may use for a part of a doc: its headings and its bold paragraph labels."""
    heads = [m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", doc, re.M)]
    return heads + re.findall(r"\*\*([^*\n]+)\*\*", doc)


def test_scanner_finds_what_it_must_and_nothing_else():
    own = {"README.md"}
    bad = ["see EMO.md section 3", "(DEEPSPEED.md)", "EVAL.md, section 5", "Recipe: SLURM.md", "CONTAINERS.md",
           "shared/reference/anything", "../shared/reference", "/work/shared/x"]
    for text in bad:
        assert external_citations(text, own), text
    good = ["docs/objectives.md, *DEMD*", "README.md", "DEMO.md", "my_EMO.md", "docs/evaluation.md",
            "emotune/shared/x.py", "shared_prefix=false"]
    for text in good:
        assert not external_citations(text, own), text
    assert not external_citations("EMO.md", {"EMO.md"})  # a doc of our own by that name would be fine


def test_no_citation_of_files_outside_the_repository():
    texts = shipped_texts()
    assert "docs/objectives.md" in texts and any(f.startswith("emotune/") for f in texts), "scanned the wrong tree"
    own = {Path(f).name for f in repo_files()}
    hits = [f"{rel}:{text.count(chr(10), 0, text.find(c)) + 1}: {c}"
            for rel, text in texts.items() for c in external_citations(text, own)]
    assert not hits, "cite docs/ instead of files outside the repository:\n" + "\n".join(hits)


def test_doc_citations_point_at_existing_docs_and_sections():
    texts = shipped_texts()
    missing = []
    for rel, text in texts.items():
        for m in DOC_CITATION.finditer(text):
            doc = ROOT / "docs" / m.group(1)
            if not doc.is_file():
                missing.append(f"{rel}: {m.group(0)} (no such doc)")
            elif m.group(2) and not any(s.startswith(m.group(2)) for s in doc_sections(doc.read_text("utf-8"))):
                missing.append(f"{rel}: {m.group(0)} (no heading or bold label {m.group(2)!r} there)")
    assert not missing, "\n".join(missing)


def test_cited_markdown_paths_are_files_of_the_repository():
    files = set(repo_files())
    assert MD_PATH.findall("see docs/a.md and x/y/b.md, not https://host/c.md") == ["docs/a.md", "x/y/b.md"]
    missing = sorted({f"{rel}: {path}" for rel, text in shipped_texts().items()
                      for path in MD_PATH.findall(text) if path not in files})
    assert not missing, "cited Markdown files that the repository does not have:\n" + "\n".join(missing)


@pytest.mark.parametrize("section", ["Conventions", "MLE", "DEMD", "Cost embedding", "Dense targets",
                                     "Mixing MLE and DEMD", "TaiLr and MixCE", "Cases every implementation",
                                     "Training recipes"])
def test_objectives_doc_holds_the_specification(section):
    doc = (ROOT / "docs" / "objectives.md").read_text("utf-8")
    assert any(s.startswith(section) for s in doc_sections(doc))
