"""Every doc and docstring reference resolves inside the repository.

- Links: every relative markdown link and image (``[x](path#anchor)``) of every ``*.md`` file
  points at an existing file, and its anchor at a heading of the target (GitHub's slugs).
- File references: every path-like token ending in ``.md``, ``.py``, ``.toml`` or ``.json``
  in the markdown files and in the docstrings and comments of the Python files names an
  existing file, relative to the repository root, ``docs/``, ``flwr_byz/`` or the citing file's
  folder (a bare file name: any file of that name). Generated or external names are listed in
  :data:`NOT_IN_REPO`, each with its reason; ``results/...`` paths and a command's output
  arguments (``--out x.json``) are runtime outputs.
- Planning documents: nothing cites a document outside the repository (their names are built
  below so that this file does not cite them either), and code cites the algorithms page as
  ``docs/ALGORITHMS.md``.
- Sections: ``docs/ALGORITHMS.md, <Section>`` and ``docs/ALGORITHMS.md §<Section>`` name a
  heading of that page.

The checks are functions of a root folder, so the last test runs them on a small broken tree.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()  # states the conventions, so it is left out of their checks

#: Folders never scanned: tool caches, environments and generated outputs.
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "results",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "build",
    "dist",
    "node_modules",
}

#: Text files checked for references to documents outside the repository.
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml", ".sh"}
TEXT_NAMES = {"Makefile", "run"}

#: Names that look like file references but are not files of the repository, with the reason.
NOT_IN_REPO: dict[str, str] = {
    "results.md": "the table `flwr-byz grid` writes into its --out-dir",
    "table.md": "the table an experiment script writes into its output folder",
    "table-seeds.md": "the per-seed table experiments/byzsgd.py writes",
    "results.json": "what experiments/ef21_resets.py writes to --out",
    "before.json": "a result file experiments/same_numbers.py writes (usage example)",
    "after.json": "a result file experiments/same_numbers.py writes (usage example)",
    "exp.toml": "the user's own config file in an example command",
    "file.toml": "a user's config file (`--config file.toml`) in a docstring",
    "work/result.json": "what tests/simulations/interrupt_probe.py writes into its work folder",
    "Garfield_legacy/byzWorker.py": "a file of the authors' repository LPD-EPFL/Garfield",
}

# The planning documents that live outside the repository (built, not written out).
_OUTSIDE = ("../" + "shared", "DESIGN" + ".md")
_ALGORITHMS = "docs/ALGORITHMS.md"

_PATH = re.compile(r"(?<![\w./:~$@-])((?:[\w.-]+/)*[\w.-]*\w\.(?:md|py|toml|json))(?![\w/-])")
_OUTPUT_ARG = re.compile(r"(?:--out(?:-dir)?|--work|--docs|--checkpoint|-o|>)[ =]$")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`+[^`\n]*`+")
_SECTION_REF = re.compile(
    re.escape(_ALGORITHMS) + r"(?:,[ \t]*(?:\n[ \t]*#?[ \t]*)?|[ \t]*§[ \t]*)"
)
# Python lexemes that matter for prose: triple quotes, comments, one-line strings (skipped).
_LEX = re.compile(r"\"\"\"|'''|#[^\n]*|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'")


# --- the repository's files ----------------------------------------------------------------


@cache
def repo_files(root: Path) -> tuple[Path, ...]:
    """Every file under ``root``, without the folders of :data:`SKIP_DIRS` and ``*.egg-info``."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        found.extend(Path(folder, name) for name in sorted(files))
    return tuple(found)


@cache
def file_names(root: Path) -> frozenset[str]:
    return frozenset(p.name for p in repo_files(root))


def markdown_files(root: Path) -> list[Path]:
    return [p for p in repo_files(root) if p.suffix == ".md"]


def python_files(root: Path) -> list[Path]:
    return [p for p in repo_files(root) if p.suffix == ".py"]


def text_files(root: Path) -> list[Path]:
    return [p for p in repo_files(root) if p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES]


@cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def where(path: Path, root: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(root)}:{line_of(text, pos)}"


# --- markdown ------------------------------------------------------------------------------


def outside_fences(text: str) -> str:
    """``text`` with the lines of fenced code blocks blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None:
            if m and m.group(1) == fence:
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def heading_text(raw: str) -> str:
    """A heading as rendered: links and images become their text, emphasis marks go."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    return re.sub(r"(\*\*|__|(?<!\w)[*_]|[*_](?!\w))", "", text).strip()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading_text(heading).lower())
    return text.replace(" ", "-")


@cache
def headings(path: Path) -> tuple[str, ...]:
    """The headings of a markdown file (outside code blocks), as rendered text."""
    return tuple(
        heading_text(m.group(2))
        for line in outside_fences(read(path)).split("\n")
        if (m := _HEADING.match(line))
    )


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a markdown file's headings; repeated ones get ``-1``, ``-2``, ..."""
    seen: dict[str, int] = {}
    out = set()
    for h in headings(path):
        base = slug(h)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


def link_problems(root: Path) -> list[str]:
    """Relative links and images of every markdown file that do not resolve."""
    problems = []
    for md in markdown_files(root):
        text = _INLINE_CODE.sub(lambda m: " " * len(m.group()), outside_fences(read(md)))
        targets = [(m.start(), m.group(1)) for m in _LINK.finditer(text)]
        targets += [(m.start(), m.group(1)) for m in _REF_DEF.finditer(text)]
        for pos, target in targets:
            if re.match(r"[a-zA-Z][\w+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            at = where(md, root, text, pos)
            if not dest.exists() or not dest.is_relative_to(root.resolve()):
                problems.append(f"{at}: link to a missing file: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{at}: link to a missing heading: {target}")
    return problems


# --- file references in prose --------------------------------------------------------------


def prose_spans(source: str) -> list[tuple[int, int]]:
    """The spans of a Python source that are prose: triple-quoted strings and comments."""
    spans, pos = [], 0
    while m := _LEX.search(source, pos):
        token = m.group()
        if token in ('"""', "'''"):
            end = source.find(token, m.end())
            end = len(source) if end < 0 else end
            spans.append((m.end(), end))
            pos = end + 3
        else:
            if token.startswith("#"):
                spans.append((m.start(), m.end()))
            pos = m.end()
    return spans


def in_spans(spans: list[tuple[int, int]], starts: list[int], pos: int) -> bool:
    """Whether ``pos`` lies in one of the sorted, disjoint ``spans`` (``starts``: their starts)."""
    i = bisect.bisect_right(starts, pos) - 1
    return i >= 0 and pos < spans[i][1]


def resolves(token: str, cited_in: Path, root: Path) -> bool:
    """Whether a cited path names a file of the repository (module doc)."""
    if "/" not in token and token in file_names(root):
        return True
    bases = (root, root / "docs", root / "flwr_byz", cited_in.parent)
    found = ((base / token).resolve() for base in bases)
    return any(p.is_file() and p.is_relative_to(root.resolve()) for p in found)


def path_tokens(path: Path) -> Iterator[tuple[int, str]]:
    """(position, token) of the path-like tokens of a file's prose (all of a markdown file)."""
    text = read(path)
    spans = prose_spans(text) if path.suffix == ".py" else None
    starts = [start for start, _ in spans or ()]
    for m in _PATH.finditer(text):
        if spans is None or in_spans(spans, starts, m.start()):
            yield m.start(), m.group(1)


def reference_problems(root: Path) -> list[str]:
    """File references in the docs and in docstrings/comments that name no file."""
    problems = []
    for path in markdown_files(root) + python_files(root):
        text = read(path)
        for pos, token in path_tokens(path):
            if token in NOT_IN_REPO or token.startswith("results/"):
                continue
            if _OUTPUT_ARG.search(text[max(0, pos - 16) : pos]):
                continue  # a command's output argument
            if not resolves(token, path, root):
                problems.append(f"{where(path, root, text, pos)}: no such file: {token}")
    return list(dict.fromkeys(problems))  # a link's text and target may cite the same file


# --- planning documents and section names --------------------------------------------------


def planning_problems(root: Path) -> list[str]:
    """Citations of documents outside the repository, and of the algorithms page without
    its folder outside ``docs/``."""
    problems = []
    for path in text_files(root):
        if path == SELF:
            continue
        text = read(path)
        for name in _OUTSIDE:
            for m in re.finditer(re.escape(name), text):
                problems.append(f"{where(path, root, text, m.start())}: cites {name}")
        if path.parent != root / "docs":
            for m in re.finditer(r"(?<![\w/])ALGORITHMS\.md", text):
                at = where(path, root, text, m.start())
                problems.append(f"{at}: write {_ALGORITHMS} (the page in the repository)")
    return problems


def section_problems(root: Path) -> list[str]:
    """``docs/ALGORITHMS.md, <Section>`` citations whose section is no heading of the page."""
    page = root / _ALGORITHMS
    names = sorted(headings(page), key=len, reverse=True) if page.is_file() else []
    problems = []
    for path in text_files(root):
        if path == SELF:
            continue
        text = read(path)
        for m in _SECTION_REF.finditer(text):
            after = text[m.end() : m.end() + 120]
            if not any(
                after.startswith(h) and not re.match(r"[\w-]", after[len(h) : len(h) + 1])
                for h in names
            ):
                cited = after.split("\n")[0][:40]
                at = where(path, root, text, m.start())
                problems.append(f"{at}: no section of {_ALGORITHMS} starts {cited!r}")
    return problems


# --- the tests -----------------------------------------------------------------------------


def test_markdown_links_resolve() -> None:
    problems = link_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_file_references_resolve() -> None:
    problems = reference_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_nothing_cites_documents_outside_the_repository() -> None:
    problems = planning_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_algorithms_sections_exist() -> None:
    assert (ROOT / _ALGORITHMS).is_file()
    problems = section_problems(ROOT)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Byz-EF21-SGDM", "byz-ef21-sgdm"),
        ("Eq. (10) clipping", "eq-10-clipping"),
        ("1. Run: `flwr-byz deploy`", "1-run-flwr-byz-deploy"),
        ("C1.1 Byz-VR-MARINA-PP: clipping — **partly**", "c11-byz-vr-marina-pp-clipping--partly"),
        ("mu2-SGD", "mu2-sgd"),
        ("snake_case [link](x.md)", "snake_case-link"),
    ],
)
def test_slugs_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_checks_report_what_is_broken(tmp_path: Path) -> None:
    """A tree with one broken thing per check: each is reported, the good ones are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "docs" / "ALGORITHMS.md").write_text("# Algorithms\n\n## Krum\n\nText.\n")
    (tmp_path / "docs" / "GUIDE.md").write_text(
        "# Guide\n\n"
        "[ok](ALGORITHMS.md#krum) [gone](MISSING.md) [bad anchor](ALGORITHMS.md#bulyan)\n"
        "![figure](img/none.png) [web](https://example.org/x.md) `[code](nowhere.md)`\n\n"
        "```bash\n# not a heading\nflwr-byz run --out out/r.json\n```\n"
    )
    (tmp_path / "pkg" / "mod.py").write_text(
        '"""See docs/ALGORITHMS.md, Krum and docs/ALGORITHMS.md, Bulyan; pkg/mod.py;\n'
        'also pkg/gone.py and results/r.json."""\n\n'
        'x = "code/not_prose.json"  # a comment citing ALGORITHMS.md\n'
    )
    (tmp_path / "README.md").write_text("Read " + _OUTSIDE[1] + " and [guide](docs/GUIDE.md).\n")

    links = link_problems(tmp_path)
    assert [p.split(": ", 1)[1] for p in links] == [
        "link to a missing file: MISSING.md",
        "link to a missing heading: ALGORITHMS.md#bulyan",
        "link to a missing file: img/none.png",
    ]
    assert links[0].startswith("docs/GUIDE.md:3:")

    assert reference_problems(tmp_path) == [
        "README.md:1: no such file: " + _OUTSIDE[1],
        "docs/GUIDE.md:3: no such file: MISSING.md",
        "docs/GUIDE.md:4: no such file: nowhere.md",  # inline code is checked as a reference
        "pkg/mod.py:2: no such file: pkg/gone.py",
    ]

    planning = planning_problems(tmp_path)
    assert [p.split(": ", 1)[0] for p in planning] == ["README.md:1", "pkg/mod.py:4"]

    sections = section_problems(tmp_path)
    assert len(sections) == 1 and "'Bulyan; pkg/mod.py;'" in sections[0]
