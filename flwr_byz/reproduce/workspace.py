"""Where ``flwr-byz reproduce`` keeps its runs, sections and figures.

Runs are stored by a hash of their config (``runs/<method>-<hash>.json`` under the
budget's folder), so a config shared by two claims runs once, an interrupted reproduction
resumes, and a changed setup never reuses a stale file. The setups are fixed: an option a setup
leaves to the method (``METHOD_OPTIONS``) is pinned (``pinned``), never a re-swept default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ..methods.defaults import LEGACY
from ..simulations.config import METHOD_OPTIONS, ExperimentConfig
from ..simulations.result import Result
from .pool import job_pool, run_all
from .section import Budget, Section

__all__ = ["Workspace", "pinned"]


def pinned(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with every method-dependent option it leaves unset at the value all methods
    shared when the results were first made (``LEGACY``), not the method's current default:
    a setup does not move when the defaults are swept again, and its run files keep their
    names."""
    unset = {n: getattr(LEGACY, n) for n in METHOD_OPTIONS if getattr(cfg, n) is None}
    return dataclasses.replace(cfg, **unset) if unset else cfg


@dataclass
class Workspace:
    """``work``: runs and sections (``<work>/<full|quick>/``, ``<work>/<full|quick>-cuda/``
    on a GPU); ``docs``: RESULTS.md's folder, figures under ``docs/img`` (``docs/img/cuda``)."""

    budget: Budget
    work: Path
    docs: Path
    new_runs: int = 0  # counted since the last reset, for the section being built
    reused_runs: int = 0
    made: set[str] = field(default_factory=set)  # paths made by this build (any section)
    _pool: ProcessPoolExecutor | None = field(default=None, repr=False)

    def close(self) -> None:
        """Shut down the worker processes ``run`` keeps between calls (if any)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def root(self) -> Path:
        """The budget's folder: ``<work>/<full|quick>``, or ``<work>/<full|quick>-cuda`` for
        a GPU budget (its runs, sections and measurements apart: RESULTS.md's GPU section)."""
        return self.root_of(self.budget.device)

    def root_of(self, device: str) -> Path:
        """The folder of this budget's runs and sections on ``device`` (``cuda:N`` as ``cuda``)."""
        kind = _kind(device)
        name = "quick" if self.budget.quick else "full"
        return self.work / (name if kind == "cpu" else f"{name}-{kind}")

    def out_path(self, cfg: ExperimentConfig) -> Path:
        """Where the run of ``cfg`` (pinned, on the budget's device) is stored: a hash of its
        config. Runs on another device are other files (float rounding differs)."""
        cfg = dataclasses.replace(cfg, device=self.budget.device)
        values = dataclasses.replace(pinned(cfg), out=None).to_dict()
        if values.get("device") == "cpu":  # the default: keys of earlier runs stay valid
            del values["device"]
        key = json.dumps(values, sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.root / "runs" / f"{cfg.method}-{digest}.json"

    def run(
        self, configs: Mapping[str, ExperimentConfig], engine: str | None = None
    ) -> dict[str, Result]:
        """Run (or reuse) every config (pinned, on the budget's device) on ``engine`` (default:
        the budget's); name -> its Result. With more than one job the worker processes stay
        up for the next call until ``close`` (or the ``with`` block's end)."""
        device = self.budget.device
        placed = {
            k: dataclasses.replace(pinned(c), device=device, out=str(self.out_path(c)))
            for k, c in configs.items()
        }
        for out in {str(c.out) for c in placed.values()}:
            self.stored(Path(out))
        todo = [c for c in placed.values() if not Path(str(c.out)).exists()]
        if todo and self.budget.jobs > 1 and self._pool is None:
            self._pool = job_pool(self.budget.jobs)  # kept for the next calls: see ``close``
        try:
            run_all(
                list(placed.values()),
                self.budget.jobs,
                progress=_progress,
                engine=engine or self.budget.engine,
                pool=self._pool if self.budget.jobs > 1 else None,
            )
        except BaseException:
            self._pool = None  # run_all stopped it
            raise
        return {k: Result.load(str(c.out)) for k, c in placed.items()}

    def stored(self, path: Path) -> bool:
        """Whether the run or measurement at ``path`` is stored already. It counts as reused
        when an earlier build stored it, else as new (also when another section of this
        build made it: C4.2 reads C4.1's runs)."""
        exists = path.exists()
        if exists and str(path) not in self.made:
            self.reused_runs += 1
        else:
            self.new_runs += 1
            self.made.add(str(path))
        return exists

    def figure(self, name: str) -> Path:
        """Path of a figure: ``<docs>/img/<name>.png`` (``<docs>/img/cuda/`` on a GPU)."""
        kind = _kind(self.budget.device)
        return self.docs / "img" / ("" if kind == "cpu" else kind) / f"{name}.png"

    def link(self, path: Path) -> str:
        """``path`` relative to the docs folder, for a markdown image link."""
        return os.path.relpath(path, self.docs)

    def section_path(self, key: str) -> Path:
        return self.root / "sections" / f"{key}.json"

    def sections(self, device: str | None = None) -> dict[str, Section]:
        """The saved sections of this budget on ``device`` (default: the budget's), by key."""
        folder = self.root_of(device or self.budget.device) / "sections"
        return {p.stem: Section.load(p) for p in sorted(folder.glob("*.json"))}


def _kind(device: str) -> str:
    """``cpu`` or ``cuda`` (``cuda:1`` -> ``cuda``)."""
    return device.split(":")[0]


def _progress(done: int, total: int, out: str) -> None:
    if done == total or done % 20 == 0:
        print(f"  {done}/{total} runs done", flush=True)
