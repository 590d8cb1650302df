"""The benchmarks' output: the JSON document (rewritten atomically after every step, so that
partial results survive), progress lines on stderr, and the tables: the aggregator benchmark's
per-size text table (:func:`print_aggregator_table`) and the engine benchmark's markdown table
(:func:`engine_table`). The tables read only the JSON document."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from flwr_byz.files import write_text

__all__ = ["describe_error", "engine_table", "log", "print_aggregator_table", "save_json"]


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def save_json(path: str | Path, doc: dict[str, Any], indent: int) -> None:
    """Write ``doc`` to ``path`` atomically (a killed run leaves the previous version)."""
    write_text(Path(path), json.dumps(doc, indent=indent) + "\n")


def describe_error(exc: BaseException, refused: bool = False) -> str:
    """``refused: <msg>`` for a ValueError of ours, ``error: <Type>: <msg>`` otherwise."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if refused and isinstance(exc, ValueError):
        return f"refused: {msg}"
    return f"error: {type(exc).__name__}: {msg}"[:300]


# --------------------------------------------------------------------------- aggregators
def _fmt(v: float | None, width: int, suffix: str = "") -> str:
    if v is None:
        return "-".rjust(width)
    text = f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return (text + suffix).rjust(width)


def print_aggregator_table(size: dict[str, Any]) -> None:
    """Readable per-size table on stdout, then the skip reasons."""
    print(
        f"\nn={size['n']} d={size['d']} f={size['f']} (Bulyan f={size['f_bulyan']}), "
        f"input {size['input_mb']} MiB, torch.mean floor {_fmt(size['mean_floor_ms'], 0)} ms; "
        f"peak = extra memory of ours ({size.get('peak_memory', 'rss')}), xInput = peak / input"
    )
    cols = (
        ("rule", 21), ("ours ms", 9), ("peak MiB", 9), ("xInput", 7), ("Fl.msg", 8),
        ("Fl.np", 8), ("Fl.legacy", 9), ("ByzFL", 8), ("impl", 5), ("best/ours", 9),
        ("leg/ours", 8), ("xMean", 7),
    )  # fmt: skip
    print(" ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(cols)))
    notes: list[str] = []
    for name, r in size["rules"].items():
        failed = "refused" if r["skipped"].get("ours", "").startswith("refused") else "error"
        ours = _fmt(r["ours_ms"], 9) if r["ours_ms"] is not None else failed.rjust(9)
        row = [
            name.ljust(21),
            ours,
            _fmt(r["ours_peak_mb"], 9),
            _fmt(r["ours_peak_ratio"], 7),
            _fmt(r["flower_msg_ms"], 8),
            _fmt(r["flower_numpy_ms"], 8),
            _fmt(r["flower_legacy_ms"], 9),
            _fmt(r["byzfl_ms"], 8),
            (r["byzfl_impl"] or "-").rjust(5),
            _fmt(r["speedup_vs_best_baseline"], 9, "x"),
            _fmt(r["speedup_vs_flower_legacy"], 8, "x"),
            _fmt(r["x_of_mean"], 7),
        ]
        print(" ".join(row))
        reasons: dict[str, list[str]] = {}
        for key, why in r["skipped"].items():
            if "no Flower counterpart" not in why:
                reasons.setdefault(why, []).append(key)
        notes.extend(f"  {name} / {', '.join(keys)}: {why}" for why, keys in reasons.items())
        notes.extend(f"  {name}: {note}" for note in r["notes"])
    if notes:
        print("notes:")
        print("\n".join(notes))


# --------------------------------------------------------------------------- engines
def _num(v: float | None, width: int = 8) -> str:
    if v is None or not math.isfinite(v):
        return "-".rjust(width)
    if v >= 100:
        return f"{v:.0f}".rjust(width)
    if v >= 1:
        return f"{v:.2f}".rjust(width)
    return f"{v:.3g}".rjust(width)


def engine_table(doc: dict[str, Any]) -> str:
    """The markdown table of ``doc``: s/round per engine, then x local and x plain."""
    labels = doc["config"].get("methods", {})
    engines = doc["config"].get("engines") or [c["engine"] for c in doc["cells"]]
    engine_cols = list(dict.fromkeys(["plain", *engines]))
    present = {c["engine"] for c in doc["cells"]}
    engine_cols = [e for e in engine_cols if e in present]
    faster = [e for e in engine_cols if e not in ("local", "plain")]
    head = ["model", "n", "method"] + [f"{e} s" for e in engine_cols]
    head += [f"local/{e}" for e in faster] + [f"{e}/plain" for e in engine_cols if e != "plain"]
    lines = [
        "Seconds per round (mean of the rounds after the first; "
        f"{doc['config']['threads']} torch thread(s) per process); local/X: X's speed-up over "
        "the local engine; X/plain: X's time over the plain torch loop's.",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in doc["ratios"]:
        secs = r["s_per_round"]
        label = labels.get(r["method"], {}).get("label", r["method"])
        row = [r["model"], str(r["clients"]), label]
        row += [_num(secs.get(e)).strip() for e in engine_cols]
        row += [_num(r["x_local"].get(e)).strip() for e in faster]
        row += [_num(r["x_plain"].get(e)).strip() for e in engine_cols if e != "plain"]
        lines.append("| " + " | ".join(row) + " |")
    skipped = [c for c in doc["cells"] if c["skipped"]]
    if skipped:
        lines.append("")
        lines.append("Skipped cells:")
        for c in skipped:
            lines.append(
                f"- {c['model']} {c['clients']} {c['method']} {c['engine']}: {c['skipped']}"
            )
    for g in doc.get("goal") or []:
        lines.append("")
        what = (
            f"Goal: {g['clients']} clients x {g['rounds']} rounds of Byz-EF21-SGDM, MNIST-1D "
            f"{g['model']}, batched engine on {g['device']}"
        )
        if g.get("skipped"):
            lines.append(f"{what}: {g['skipped']}")
        else:
            lines.append(
                f"{what}: {g['wall_s']:.1f} s wall ({g['train_s']:.1f} s in rounds, "
                f"{g['threads']} thread(s)), target < {g['target_s']:.0f} s: "
                f"{'met' if g['met'] else 'not met'}; final accuracy {g['final_accuracy']:.3f}"
            )
    m = doc["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cores_available']} cores, torch {m['torch']}, flwr {m['flwr']}, load "
        f"{m['loadavg_start']} -> {m.get('loadavg_end')}; elapsed {doc.get('elapsed_s')} s."
    )
    return "\n".join(lines) + "\n"
