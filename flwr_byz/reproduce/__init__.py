"""``flwr-byz reproduce``: regenerate docs/RESULTS.md, offline, from scratch.

Targets (``targets.TARGETS``): every claim of the four papers (``c1.1`` ... ``c4.2``: one
``Claim`` each, one module per paper under ``papers/``), the dense-reset check
``ef21-resets``, the attack x defence ``matrix``, the ``backdoor`` matrix (clean accuracy and
attack success rate) and the ``performance`` report; ``all`` is every one of them. Each target
writes its section (``<work>/<full|quick>/sections/<key>.json``) and its figures
(``<docs>/img``), then RESULTS.md is assembled from every section there (``document``), so one
target can be redone alone. RESULTS.md opens with a "Which method when" summary built from the
sections' ``data`` and the claims' verdicts. The statistics behind every table and verdict
(seed intervals, "within noise", the plateau and tuning rules) are in ``stats``.

A ``cuda`` budget (``--device cuda``) keeps its runs, sections and figures apart
(``<work>/<full|quick>-cuda/``, ``<docs>/img/cuda``); RESULTS.md keeps the CPU sections in its
body and adds a GPU section (each section's time beside the CPU's, and its tables) whenever
GPU sections are saved.
Nothing is written outside the two folders it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .claim import Claim
from .document import write_document
from .papers import CLAIMS
from .section import Budget, Section
from .targets import TARGETS, resolve_targets
from .workspace import Workspace

__all__ = [
    "CLAIMS",
    "TARGETS",
    "Budget",
    "Claim",
    "Section",
    "Workspace",
    "reproduce",
    "resolve_targets",
    "write_document",
]


def reproduce(
    names: Sequence[str],
    budget: Budget,
    work: Path,
    docs: Path,
    echo: Callable[[str], None] = print,
) -> Path:
    """Build the sections ``names`` (runs and sections under ``work``, figures under
    ``docs/img``), then write ``docs/RESULTS.md``; returns its path."""
    with Workspace(budget, Path(work), Path(docs)) as ws:
        _build(ws, resolve_targets(names), echo)
        return write_document(ws)


def _build(ws: Workspace, keys: Sequence[str], echo: Callable[[str], None]) -> None:
    """Build the sections ``keys`` in order, each saved as soon as it is done."""
    budget = ws.budget
    for key in keys:
        echo(f"== {key}")
        path = ws.section_path(key)
        previous = Section.load(path) if path.exists() else None
        ws.new_runs = ws.reused_runs = 0
        start = time.perf_counter()
        section = TARGETS[key](ws)
        section.seconds = round(time.perf_counter() - start, 1)
        section.new_runs, section.reused_runs = ws.new_runs, ws.reused_runs
        if section.reused_runs == 0:
            section.scratch_seconds = section.seconds
        elif previous is not None:
            section.scratch_seconds = previous.scratch_seconds
        section.quick = budget.quick
        section.save(path)
        tail = f": {section.verdict}" if section.verdict else ""
        echo(
            f"   {key} done in {section.seconds:.0f} s ({section.new_runs} runs made, "
            f"{section.reused_runs} reused){tail}"
        )
