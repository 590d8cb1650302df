"""RESULTS.md's assembly from the saved sections: the header, the opening summary (from the
sections' data), the GPU section, the from-scratch time, the targets, and the CLI writing only
under the folders it is given."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flwr_byz.reproduce import CLAIMS, TARGETS, Budget, Section, Workspace, write_document
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from ..test_docs import link_problems
from .helpers import result


def test_document_lists_missing_targets(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=False, jobs=1), tmp_path / "work", tmp_path / "docs")
    Section("c2.1", "C2.1 title", "body text", verdict="partly", summary="s").save(
        ws.section_path("c2.1")
    )
    doc = write_document(ws).read_text()
    assert "### C2.1 title — **partly**" in doc and "body text" in doc
    assert "| C2.1 |" in doc and "| C1.1 |" in doc
    assert "Not run yet: `flwr-byz reproduce matrix`." in doc
    assert "0 reproduced, 0 within noise, 1 partly, 0 not reproduced of 8." in doc
    assert "no from-scratch time recorded" in doc
    path = ws.section_path("c2.1")
    path.write_text(path.read_text().replace('"key"', '"from_the_future": 1, "key"'))
    assert Section.load(path).verdict == "partly"  # unknown keys are ignored
    with pytest.raises(ValueError, match="verdict must be one of"):
        Section("x", "t", "m", verdict="maybe")


def test_reproduce_records_from_scratch_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwr_byz.reproduce as rep

    stored = tmp_path / "measure.json"

    def build(ws: Workspace, key: str) -> Section:
        if not ws.stored(stored):
            stored.write_text("{}")
        ws.stored(stored)  # a second section of the same build reading it: still "new"
        return Section(key, f"{key} title", "body", verdict="reproduced")

    monkeypatch.setitem(rep.TARGETS, "c1.1", lambda ws: build(ws, "c1.1"))
    budget = Budget.make(quick=True, jobs=1)
    work, docs = tmp_path / "work", tmp_path / "docs"
    rep.reproduce(["c1.1"], budget, work, docs, echo=lambda _: None)
    first = Section.load(work / "quick" / "sections" / "c1.1.json")
    assert (first.new_runs, first.reused_runs) == (2, 0)
    assert first.scratch_seconds == first.seconds
    monkeypatch.setattr(rep.time, "perf_counter", iter([100.0, 160.0]).__next__)
    doc = rep.reproduce(["c1.1"], budget, work, docs, echo=lambda _: None).read_text()
    again = Section.load(work / "quick" / "sections" / "c1.1.json")
    assert (again.new_runs, again.reused_runs) == (0, 2)
    assert again.seconds == 60.0 and again.scratch_seconds == first.scratch_seconds
    assert "2 runs, 0.0 min from scratch (this build 1.0 min, 2 reused)" in doc


def test_targets_and_cli_errors() -> None:
    from flwr_byz.cli import app
    from flwr_byz.reproduce import resolve_targets

    assert list(TARGETS)[:8] == list(CLAIMS)
    assert list(TARGETS)[8:] == ["ef21-resets", "matrix", "backdoor", "performance"]
    assert resolve_targets([]) == list(TARGETS) == resolve_targets(["c1.1", "all"])
    assert resolve_targets(["C4.2", "c4.2"]) == ["c4.2"]
    with pytest.raises(ValueError, match=r"known: all, c1\.1"):
        resolve_targets(["c9.9"])
    out = CliRunner().invoke(app, ["reproduce", "c9.9"])
    assert out.exit_code == 2 and "c9.9" in out.output


def test_cli_writes_only_under_the_folders_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--work`` and ``--docs`` (or their defaults, relative to the current directory): the
    runs, sections, figures and RESULTS.md go there and nowhere else."""
    from flwr_byz.cli import app

    def fabricate(self: Workspace, configs: Mapping[str, ExperimentConfig]) -> dict[str, Result]:
        for c in configs.values():
            self.stored(self.out_path(c))
        return {k: result(c, [0.5] * c.rounds, gap=[1.0] * c.rounds) for k, c in configs.items()}

    monkeypatch.setattr(Workspace, "run", fabricate)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work, docs = tmp_path / "w", tmp_path / "d"
    args = ["reproduce", "c1.1", "--quick", "--jobs", "1"]
    out = CliRunner().invoke(app, [*args, "--work", str(work), "--docs", str(docs)])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "d", "w"]
    assert not any(cwd.iterdir())
    assert sorted(p.name for p in docs.rglob("*")) == ["RESULTS.md", "c1_1_gap.png", "img"]
    assert (work / "quick" / "sections" / "c1.1.json").is_file()
    out = CliRunner().invoke(app, args)  # the defaults: under the current directory
    assert out.exit_code == 0, out.output
    assert (cwd / "results" / "reproduce" / "quick" / "docs" / "RESULTS.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "d", "w"]


def _row(clean: float, worst: float, attack: str, mb: float, **extra: float) -> dict[str, object]:
    return {"clean": clean, "worst": worst, "worst_attack": attack, "mb_up_per_round": mb,
            "lr": 0.2, "param": "", **extra}  # fmt: skip


def _sections() -> list[Section]:
    """A matrix (two settings), a backdoor matrix and three claims, with the summary's data."""
    cnn = {
        "FedAvg": _row(0.93, 0.12, "sign-flip", 0.40, rounds=50),
        "RobustFedAvg CWMed": _row(0.90, 0.71, "alie", 0.40),
        "RobustFedAvg CClip": _row(0.92, 0.85, "ipm", 0.40, worst_half=0.011),
        "RobustFedAvg NNM+Krum": _row(0.91, 0.83, "alie", 0.40),
        "RobustFedAvg Krum": _row(0.91, 0.50, "mimic", 0.40),
        "Byz-VR-MARINA-PP": _row(0.80, 0.60, "alie", 0.05),
        "Byz-EF21-SGDM (TopK 10%)": _row(0.88, 0.70, "min-max", 0.04, rounds=600),
        "ByzSGD (1 of 5 servers Byzantine)": _row(0.85, 0.66, "mimic", 0.40),
    }
    matrix = Section("matrix", "Attack x defence matrix", "matrix body", data={
        "settings": {
            "cnn": {"label": "MNIST-1D CNN", "rows": cnn},
            "lenet": {"label": "MNIST copy, LeNet",
                      "rows": {"FedAvg": _row(0.97, 0.10, "ipm", 0.2),
                               "RobustFedAvg GeoMed": _row(0.96, 0.90, "alie", 0.2)}},
        },
        "fedavg_clean": {"cnn": 0.93, "lenet": 0.97},
    })  # fmt: skip
    backdoor = Section("backdoor", "Backdoor matrix", "backdoor body", data={"rows": {
        "FedAvg": {"clean": 0.92, "asr_worst": 0.98, "worst_attack": "badnets"},
        "FLAME": {"clean": 0.90, "asr_worst": 0.03, "worst_attack": "dba"},
        "CWMed": {"clean": 0.80, "asr_worst": 0.01, "worst_attack": "dba"},  # too inaccurate
        "NormClip": {"clean": 0.91, "asr_worst": 0.40, "worst_attack": "neurotoxin"},
    }})  # fmt: skip
    claims = [
        Section("c1.1", "C1.1 MARINA-PP title", "c11 body", verdict="partly"),
        Section("c1.2", "C1.2 clipping title", "c12 body", verdict="reproduced"),
        Section("c4.1", "C4.1 ByzSGD title", "c41 body", verdict="within noise",
                summary="within 3 points in 4 of 4 cells"),
    ]  # fmt: skip
    return [matrix, backdoor, *claims]


def _summary(doc: str) -> list[str]:
    start = doc.index("## Which method when")
    return doc[start : doc.index("## Claims")].strip().splitlines()


def test_summary_names_the_rows_and_verdicts_that_back_it(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=False, jobs=1), tmp_path / "work", tmp_path / "docs")
    for s in _sections():
        s.save(ws.section_path(s.key))
    doc = write_document(ws).read_text()
    summary = _summary(doc)
    assert len(summary) <= 25
    text = "\n".join(summary)
    # untargeted: the best worst-case rows of each setting, best first, then FedAvg's numbers
    cnn = next(line for line in summary if "MNIST-1D CNN: " in line)
    assert cnn.index("RobustFedAvg CClip 85.0 ± 1.1% at worst (under ipm)") < cnn.index(
        "RobustFedAvg NNM+Krum 83.0%"
    ) < cnn.index("RobustFedAvg CWMed 71.0%")  # fmt: skip
    assert "Krum 50.0%" not in cnn  # three rows per setting
    assert "FedAvg 12.0% at worst (93.0% attack-free)" in cnn
    assert "MNIST copy, LeNet: RobustFedAvg GeoMed 90.0% at worst" in text
    # backdoors: the lowest worst ASR among the defences within 5 points of FedAvg's clean
    assert "FLAME, worst ASR 3.0% (under dba), lowest clean accuracy 90.0%" in text
    assert "CWMed, worst" not in text
    assert "FedAvg's worst ASR 98.0% (under badnets), lowest clean accuracy 92.0%" in text
    # servers, participation: the claims' verdicts and the matrix rows
    assert "C4.1 **within noise** (within 3 points in 4 of 4 cells)" in text
    assert "C1.1 **partly**" in text and "C1.2 **reproduced**" in text
    assert "Byz-VR-MARINA-PP" in next(line for line in summary if line.startswith("- Partial"))
    # bandwidth: the compressed rows against FedAvg's MB per round, totals where rounds are given
    band = next(line for line in summary if "per client and round" in line)
    assert "Byz-VR-MARINA-PP 0.05 MB (8x less)" in band
    assert "Byz-EF21-SGDM (TopK 10%) 0.04 MB (10x less), 24 MB over its 600 rounds" in band
    assert "FedAvg 0.4 MB per client and round, 20 MB over its 50 rounds" in band
    assert "GeoMed" not in band  # not compressed
    # each line links the section below that backs it, by the anchor of its heading
    assert "## Attack x defence matrix\n" in doc and "(#attack-x-defence-matrix)" in cnn
    assert "### C4.1 ByzSGD title — **within noise**" in doc
    assert "[→ C4.1](#c41-byzsgd-title--within-noise)" in text
    assert "[→ backdoor](#backdoor-matrix)" in text
    assert not [p for p in link_problems(ws.docs) if "missing heading" in p]  # GitHub's slugs
    assert doc.index("## Which method when") < doc.index("## Claims")


def test_backdoor_line_measures_clean_accuracy_against_attack_free_fedavg(tmp_path: Path) -> None:
    """FedAvg's own row holds its lowest accuracy under the backdoors (model replacement can
    wreck it); the 5-point filter reads the attack-free FedAvg accuracy when the section has
    it, so a defence that lost 20 points is not recommended."""
    ws = Workspace(Budget.make(quick=False, jobs=1), tmp_path / "work", tmp_path / "docs")
    Section("backdoor", "Backdoor matrix", "body", data={"fedavg_clean": 0.93, "rows": {
        "FedAvg": {"clean": 0.36, "asr_worst": 0.99, "worst_attack": "model-replacement"},
        "FLAME": {"clean": 0.91, "asr_worst": 0.20, "worst_attack": "dba"},
        "CWMed": {"clean": 0.73, "asr_worst": 0.01, "worst_attack": "dba"},
    }}).save(ws.section_path("backdoor"))  # fmt: skip
    text = "\n".join(_summary(write_document(ws).read_text()))
    assert "FLAME, worst ASR 20.0%" in text and "CWMed, worst" not in text


def test_summary_leaves_out_what_the_data_lacks(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=False, jobs=1), tmp_path / "work", tmp_path / "docs")
    Section("c2.1", "C2.1 title", "body", verdict="partly").save(ws.section_path("c2.1"))
    assert "## Which method when" not in write_document(ws).read_text()  # nothing to say
    broken = {
        "settings": {
            "a": {"label": "A", "rows": {"FedAvg": {"clean": None}, "X": "not a row"}},
            "b": "not a setting",
            "c": {"rows": {"FedAvg": _row(0.9, 0.1, "ipm", 0.0),
                           "Y": _row(0.8, float("nan"), "", 0.0)}},
        },
        "fedavg_clean": "not a dict",
    }  # fmt: skip
    Section("matrix", "Matrix", "body", data=broken).save(ws.section_path("matrix"))
    Section("backdoor", "Backdoor", "body", data={"rows": {
        "CWMed": {"clean": 0.5, "asr_worst": 0.0}}}).save(ws.section_path("backdoor"))  # fmt: skip
    Section("c4.1", "C4.1 title", "body", verdict="reproduced").save(ws.section_path("c4.1"))
    doc = write_document(ws).read_text()
    summary = _summary(doc)
    assert [line for line in summary if line.startswith("- ")] == [
        "- Byzantine servers: ByzSGD (replicated servers): C4.1 **reproduced**. "
        "[→ C4.1](#c41-title--reproduced)"
    ]  # no row with a worst case, no FedAvg in the backdoor rows, no MB per round
    assert "**Participation**" not in doc and "**Bandwidth**" not in doc
    # a backdoor matrix where no defence keeps FedAvg's clean accuracy says so
    Section("backdoor", "Backdoor", "body", data={"rows": {
        "FedAvg": {"clean": 0.9, "asr_worst": 0.9}, "CWMed": {"clean": 0.5, "asr_worst": 0.0},
    }}).save(ws.section_path("backdoor"))  # fmt: skip
    assert "no defence keeps its clean accuracy within 5 points" in write_document(ws).read_text()


def test_header_states_machine_time_engine_seeds_and_rules(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=False, jobs=1), tmp_path / "work", tmp_path / "docs")
    for key, secs in (("c1.1", 600.0), ("matrix", 1200.0)):
        Section(key, f"{key} title", "body", scratch_seconds=secs).save(ws.section_path(key))
    doc = write_document(ws).read_text()
    header = doc[: doc.index("## Claims")]
    assert "cores, Python" in header and " UTC; " in header
    assert "from scratch the sections take 30 min in all" in header
    assert "the batched engine" in header
    assert "FLTrust, which it has no driver for, on the local" in header
    assert "the claims on seeds 0-4, the matrices on seeds 0-2" in header
    assert "95% intervals separate, otherwise it is **within noise**" in header
    assert "last 10% of rounds is less than 1 point above that of the 10% before" in header
    quick = Workspace(
        Budget.make(quick=True, jobs=1, engine="local"), tmp_path / "w", tmp_path / "d"
    )
    doc = write_document(quick).read_text()
    assert "**Quick budget**" in doc and "the local engine" in doc
    assert "the claims on seeds 0, 1, the matrices on seed 0." in doc


def test_gpu_runs_sections_and_figures_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--device cuda`` keeps its runs, sections and figures apart; RESULTS.md keeps the CPU
    sections in its body and adds a GPU section (times beside the CPU's, the same tables)
    only when GPU sections exist."""
    import flwr_byz.simulations.devices as devices

    work, docs = tmp_path / "work", tmp_path / "docs"
    cpu = Workspace(Budget.make(quick=False, jobs=1), work, docs)
    gpu = Workspace(Budget.make(quick=False, jobs=1, device="cuda:0"), work, docs)
    assert cpu.root == work / "full" and gpu.root == work / "full-cuda"
    assert gpu.section_path("c1.1") == work / "full-cuda" / "sections" / "c1.1.json"
    assert cpu.figure("f") == docs / "img" / "f.png"
    assert gpu.figure("f") == docs / "img" / "cuda" / "f.png"
    assert gpu.link(gpu.figure("f")) == "img/cuda/f.png"
    quick = Workspace(Budget.make(quick=True, jobs=1, device="cuda"), work, docs)
    assert quick.root == work / "quick-cuda"
    assert cpu.out_path(ExperimentConfig()).parent == work / "full" / "runs"
    assert gpu.out_path(ExperimentConfig()).parent == work / "full-cuda" / "runs"

    Section("c1.1", "C1.1 title", "cpu body", verdict="partly", scratch_seconds=600.0).save(
        cpu.section_path("c1.1")
    )
    assert "## GPU" not in write_document(cpu).read_text()  # without CUDA nothing changes
    gpu_body = "### Sub\n\n```\n# a comment, not a heading\n```\n\n| t |\n|---|\n| 1 |"
    Section("c1.1", "C1.1 title", gpu_body, verdict="reproduced", scratch_seconds=60.0).save(
        gpu.section_path("c1.1")
    )
    matrix = _sections()[0]
    matrix.scratch_seconds = 90.0
    matrix.save(gpu.section_path("matrix"))  # only on the GPU
    assert set(cpu.sections()) == {"c1.1"} and set(cpu.sections("cuda")) == {"c1.1", "matrix"}
    monkeypatch.setattr(devices, "device_name", lambda device: "NVIDIA Test GPU")
    doc = write_document(gpu).read_text()  # what `reproduce --device cuda` ends with
    assert (work / "full-cuda" / "machine.json").is_file()
    body, gpu_part = doc[: doc.index("## GPU")], doc[doc.index("## GPU") :]
    assert "### C1.1 title — **partly**" in body and "cpu body" in body
    assert "Not run yet: `flwr-byz reproduce matrix`." in body
    assert "on NVIDIA Test GPU (" in gpu_part and "`full-cuda/`" in gpu_part
    assert "| c1.1 | 10.0 min | 60 s | 10.0x | partly | reproduced |" in gpu_part
    assert "| matrix | — | 90 s | — | not run |  |" in gpu_part
    assert "| total (sections on both) | 10.0 min | 60 s | 10.0x |  |  |" in gpu_part
    assert "<details><summary>GPU: C1.1 title — reproduced (" in gpu_part
    assert "#### Sub" in gpu_part and "# a comment, not a heading" in gpu_part
    assert "| t |" in gpu_part and "## Earlier experiments" in gpu_part
    # a section run only on the GPU backs the summary from the GPU section
    untargeted = [line for line in _summary(doc) if "(untargeted)" in line]
    assert len(untargeted) == 2 and all(
        line.endswith("[→ matrix, GPU](#gpu)") for line in untargeted
    )
    assert not [p for p in link_problems(docs) if "missing heading" in p]
