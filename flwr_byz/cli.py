"""The ``flwr-byz`` command line (typer): run, grid, plot, demo, deploy, reproduce,
defaults-sweep, bench, aggregators, attacks, presets, stop. Every command's ``--help`` lists
the values its options accept, read from the registries (``_accepted``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flwr_byz.attacks import ATTACKS
from flwr_byz.files import check_writable, write_text
from flwr_byz.specs import unknown

from .simulations.config import ExperimentConfig, parse_params


class _App(typer.Typer):
    """The ``flwr-byz`` app: every command ends on Ctrl-C (SIGINT), SIGTERM or SIGHUP within
    seconds, with one line on stderr (where it stopped, how to continue), no traceback, none
    of its processes left and exit code 130 / 143 / 129 (``flwr_byz.interrupt.guarded``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from flwr_byz.interrupt import guarded

        return guarded(super().__call__, *args, hint=lambda: INTERRUPT_HINT, **kwargs)


app = _App(
    help="Byzantine-robust federated learning for Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 140)  # logs/CI: no wrapping


def _print_version(value: bool) -> None:
    if value:
        from flwr_byz import __version__

        typer.echo(f"flwr-byz {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Byzantine-robust federated learning for Flower."""


def _help(name: str, method: str | None = None) -> str:
    return escape(ExperimentConfig.help(name, method))  # "[default: x]" is not rich markup


#: The engines of ``reproduce`` and ``defaults-sweep`` (their runs go through a process pool).
POOL_ENGINES = ("local", "batched")
#: ``--device`` of the experiments (``ExperimentConfig.device``) and of ``bench``.
DEVICES = ("cpu", "cuda", "cuda:N")
BENCH_DEVICES = ("cpu", "cuda", "cuda:N", "cpu,cuda")


def _accepted(command: str | None, param: str | None) -> Any:
    """The values ``command``'s option (or argument) ``param`` accepts, read from the
    registries when ``--help`` is drawn (a list, or groups of names by label), or None."""
    from .aggregators.registry import aggregator_names
    from .attacks.registry import attack_names
    from .compressors.registry import compressor_names
    from .simulations.config import INJECTIONS
    from .simulations.datasets import DATASET_SOURCES, DATASETS, PARTITIONS
    from .simulations.engines import ENGINES
    from .simulations.methods import METHODS
    from .simulations.models import MODELS
    from .simulations.presets import PRESETS

    if (command, param) == ("deploy", "attack"):
        return attack_names(per_node=True)
    if command in ("reproduce", "defaults-sweep") and param == "engine":
        return POOL_ENGINES
    if (command, param) == ("defaults-sweep", "method"):
        from .reproduce.defaults_sweep import GRIDS

        return list(GRIDS)
    if (command, param) == ("reproduce", "targets"):
        from .reproduce.targets import TARGETS

        return ["all", *TARGETS]
    if command == "plot" and param in ("metric", "x"):
        from .simulations.plots import METRICS, X_AXES

        return list(METRICS if param == "metric" else X_AXES)
    if command == "bench":
        return {"suite": BENCHMARKS, "device": BENCH_DEVICES}.get(str(param))
    values: dict[str, Any] = {
        "method": list(METHODS),
        "aggregator": aggregator_names(),
        "attack": attack_names(),
        "compressor": compressor_names(),
        "dataset": [*DATASETS, *DATASET_SOURCES],
        "partition": PARTITIONS,
        "model": ["auto", *MODELS],
        "engine": ENGINES,
        "device": DEVICES,
        "injection": INJECTIONS,
        "preset": list(PRESETS),
    }
    return values.get(str(param))


def _with_accepted(text: str, names: Any) -> str:
    """``text`` (a help text) with ``Accepted: <names>.`` before its ``[default: ...]``."""
    from .specs import listing

    accepted = f"Accepted: {escape(listing(names))}."
    head, mark, default = text.rpartition("\\[default:")
    if not mark:
        return f"{text} {accepted}".strip()
    return f"{head.rstrip()} {accepted} {mark}{default}"


class _Command(typer.core.TyperCommand):
    """A command whose ``--help`` lists the values each option accepts (``_accepted``: from
    the registries, so the help cannot drift from them)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        import inspect

        declared = inspect.signature(self.callback).parameters if self.callback else {}
        saved = [(p, getattr(p, "help", None)) for p in self.params]
        for param, text in saved:
            if text is None and param.name in declared:  # typer's Argument loses its help
                text = getattr(declared[param.name].default, "help", None)  # (click >= 8.2)
                param.help = text
            names = _accepted(self.name, param.name)
            if names is not None:
                param.help = _with_accepted(text or "", names)
        try:
            return super().format_help(ctx, formatter)
        finally:
            for param, text in saved:
                param.help = text


def _method_in(args: Sequence[str]) -> str | None:
    """The method named by ``--method M`` / ``--method=M`` in ``args``, else by the
    ``--config`` file given there; None when neither names one."""
    for i, arg in enumerate(args):
        if arg == "--method" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--method="):
            return arg.partition("=")[2]
    for i, arg in enumerate(args):
        path = args[i + 1] if arg == "--config" and i + 1 < len(args) else None
        path = arg.partition("=")[2] if arg.startswith("--config=") else path
        if path:
            try:
                return ExperimentConfig.from_toml(path).method
            except (OSError, ValueError, TypeError):
                return None
    return None


class _MethodHelp(_Command):
    """A command whose ``--help`` shows the defaults of the method its arguments name
    (``flwr-byz run --method byz-ef21-sgdm --help``): typer renders help texts fixed at
    import, so the method-dependent options' texts are swapped while the help is drawn."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["flwr_byz.args"] = list(args)  # --help is eager: read before the parse
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from .simulations.config import METHOD_OPTIONS
        from .simulations.defaults import METHOD_DEFAULTS

        method = _method_in(ctx.meta.get("flwr_byz.args", []))
        if method not in METHOD_DEFAULTS:
            return super().format_help(ctx, formatter)
        saved = [(p, p.help) for p in self.params if p.name in METHOD_OPTIONS]
        for param, _ in saved:
            param.help = _help(str(param.name), method)
        listed = ", ".join(f"{k} {v}" for k, v in METHOD_DEFAULTS[method].to_dict().items())
        text = self.help
        self.help = f"{text}\n\n{escape(method)}'s defaults: {escape(listed)}."
        try:
            return super().format_help(ctx, formatter)
        finally:
            self.help = text
            for param, old in saved:
                param.help = old


# --- shared experiment options -----------------------------------------------------------
# typer needs them spelled out as parameters; the help text and defaults come from
# ExperimentConfig, and None means "not given" (so --config file values are kept).
def _collect(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


def _config(
    config_file: Path | None, given: dict[str, Any], params: Sequence[str]
) -> ExperimentConfig:
    """The config of a command: a preset's options (``--preset``, else the file's ``preset``)
    first, the ``--config`` file's over them, the flags given over both (docs/PRESETS.md)."""
    try:
        options = ExperimentConfig.toml_options(config_file) if config_file else {}
        ExperimentConfig.from_mapping(options)  # the file's own errors, named as its
    except (TypeError, ValueError, OSError) as exc:  # names the file, the line, the problem
        raise typer.BadParameter(str(exc), param_hint="'--config'") from exc
    try:
        values = options | given
        values["params"] = parse_params(options.get("params", {})) | parse_params(list(params))
        return ExperimentConfig.from_mapping(values)
    except (TypeError, ValueError, OSError) as exc:  # tomllib's errors are ValueErrors
        raise typer.BadParameter(str(exc)) from exc


def _key(cfg: ExperimentConfig) -> str:
    return json.dumps(dataclasses.replace(cfg, out=None).to_dict(), sort_keys=True, default=str)


#: What to do about an interrupted command (set while it trains, e.g. how to resume a run;
#: cleared when it ends normally): the interrupt message ends with it.
INTERRUPT_HINT: str | None = None


def _fail(message: str) -> typer.Exit:
    """Print ``message`` as one ``error:`` line; the ``Exit(2)`` to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def _writable(path: str | Path, what: str) -> None:
    """Fail in one line, before any training, unless a file can be written at ``path``."""
    try:
        check_writable(path, what)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _writable_dir(directory: Path, what: str, name: str = "results.md") -> None:
    """Fail in one line unless ``directory`` is (or can be made) a directory whose files
    (``name`` among them) can be written."""
    if directory.exists() and not directory.is_dir():
        raise _fail(f"{what} {directory} is a file; give a directory")
    _writable(directory / name, what)


#: Options that change how a run executes, not what it computes: left out of a grid run's key.
_EXECUTION_OPTIONS = ("out", "checkpoint", "resume", "threads", "ray_address")


def run_digest(config: dict[str, Any]) -> str:
    """A short hash of a run's resolved config (``ExperimentConfig.to_dict()`` or a result's
    ``config``; the execution options and any other key left out): what ``grid`` keys the
    result files of its runs by."""
    names = {fd.name for fd in dataclasses.fields(ExperimentConfig)} - set(_EXECUTION_OPTIONS)
    values = {k: v for k, v in config.items() if k in names}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _finished(cfg: ExperimentConfig) -> Any:
    """The ``Result`` stored at ``cfg.out`` when it is a finished run of ``cfg``, else None
    (absent, unreadable, cut short, or of another config)."""
    from .simulations.result import Result

    assert cfg.out is not None
    try:
        result = Result.load(cfg.out)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    resolved = cfg.resolved()
    same = run_digest(result.config) == run_digest(resolved.to_dict())
    return result if same and len(result.rounds) == resolved.rounds else None


def _label(cfg: ExperimentConfig) -> str:
    from .simulations.report import run_label

    attack = cfg.attack if cfg.byzantine and cfg.attack != "none" else "no attack"
    return f"{run_label(cfg.to_dict())} | {attack} | {cfg.byzantine} Byz"


@contextmanager
def _progress(configs: Sequence[ExperimentConfig]) -> Iterator[Any]:
    """A rich progress bar per run; yields the ``on_round`` callback (which also keeps the
    interrupt message's ``after round 3 of 10`` up to date)."""
    from flwr_byz.interrupt import note

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
    )
    tasks = {}
    for cfg in configs:  # prepared (``_execute``): as the round loop reports them
        tasks[_key(cfg)] = progress.add_task(escape(_label(cfg)), total=cfg.rounds, acc="—")

    finished: set[str] = set()

    def on_round(cfg: ExperimentConfig, record: Any) -> None:
        key = _key(cfg)
        task = tasks.get(key)
        if task is not None:
            progress.update(task, completed=record.round, acc=_acc_text(record))
        where = f"round {record.round} of {cfg.rounds}"
        if record.round >= cfg.rounds:
            finished.add(key)
        if len(tasks) > 1:  # "after 2 of 12 runs (the next one at round 3 of 30)"
            current = "" if key in finished else f" (the next one at {where})"
            where = f"{len(finished)} of {len(tasks)} runs{current}"
        note(f"after {where}")

    with progress:
        yield on_round


def _acc_text(record: Any) -> str:
    """A round's accuracy for the progress bar, and its ASR under a backdoor attack."""
    text = f"{100 * record.accuracy:.1f}%"
    asr = getattr(record, "asr", math.nan)
    return text if math.isnan(asr) else f"{text} asr {100 * asr:.1f}%"


def _summary(results: Sequence[Any], title: str) -> None:
    from .simulations.report import summary_rows

    rows = summary_rows([r.to_dict() for r in results])
    table = Table(title=title)
    for column in rows[0] if rows else []:
        table.add_column(column, justify="left" if column in ("run", "attack") else "right")
    for row in rows:
        table.add_row(*(escape(v) for v in row.values()))
    console.print(table)


def _execute(
    configs: list[ExperimentConfig], verbose: bool, engine: str = "simulation"
) -> list[Any]:
    from .simulations.engines import check_engine, run_experiments
    from .simulations.flower_gc import without_flower_gc

    try:  # every argument checked (prepared once per run) before any progress is drawn
        prepared = check_engine(engine, configs)
        with _progress(prepared) as on_round, without_flower_gc():  # time only (flower-bulyan)
            return run_experiments(prepared, on_round=on_round, verbose=verbose, engine=engine)
    except ValueError as exc:
        raise _fail(str(exc)) from exc


def _engines() -> tuple[str, ...]:
    from .simulations.engines import ENGINES

    return ENGINES


def _check_name(kind: str, value: str, allowed: Sequence[str]) -> None:
    """Fail in one line (``unknown <kind> 'x'; known: ...``) unless ``value`` is allowed:
    the first check of a command, before it prints or starts anything."""
    if value not in allowed:
        raise _fail(str(unknown(kind, value, allowed)))


def _check_preset(name: str | None) -> None:
    """Fail in one line (``unknown preset 'x'; known: ...``) for a ``--preset`` no one has."""
    from .simulations.presets import PRESETS

    if name is not None:
        _check_name("preset", name, list(PRESETS))


# --- commands ----------------------------------------------------------------------------
@app.command(cls=_MethodHelp)
def run(
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="TOML file of options (flags given as well override it).",
    ),
    preset: str | None = typer.Option(None, help=_help("preset")),
    method: str | None = typer.Option(None, help=_help("method")),
    aggregator: str | None = typer.Option(None, help=_help("aggregator")),
    attack: str | None = typer.Option(None, help=_help("attack")),
    byzantine: int | None = typer.Option(None, help=_help("byzantine")),
    clients: int | None = typer.Option(None, help=_help("clients")),
    clients_per_round: int | None = typer.Option(None, help=_help("clients_per_round")),
    rounds: int | None = typer.Option(None, help=_help("rounds")),
    dataset: str | None = typer.Option(None, help=_help("dataset")),
    partition: str | None = typer.Option(None, help=_help("partition")),
    model: str | None = typer.Option(None, help=_help("model")),
    lr: float | None = typer.Option(None, help=_help("lr")),
    batch_size: int | None = typer.Option(None, help=_help("batch_size")),
    local_epochs: int | None = typer.Option(None, help=_help("local_epochs")),
    momentum: float | None = typer.Option(None, help=_help("momentum")),
    weight_decay: float | None = typer.Option(None, help=_help("weight_decay")),
    compressor: str | None = typer.Option(None, help=_help("compressor")),
    f: int | None = typer.Option(None, "--f", help=_help("f")),
    seed: int | None = typer.Option(None, help=_help("seed")),
    eval_samples: int | None = typer.Option(None, min=0, help=_help("eval_samples")),
    param: list[str] = typer.Option(
        [], "--param", help="Method hyperparameter name=value (repeatable). \\[default: none]"
    ),
    ray_address: str | None = typer.Option(None, help=_help("ray_address")),
    out: Path | None = typer.Option(
        None,
        help="Result JSON path. \\[default: results/<method>-<attack>-b<byzantine>-s<seed>.json]",
    ),
    injection: str | None = typer.Option(None, help=_help("injection")),
    round_timeout: float | None = typer.Option(None, help=_help("round_timeout")),
    checkpoint: str | None = typer.Option(
        None,
        help=escape(ExperimentConfig.help("checkpoint").rsplit(" [default:", 1)[0])
        + " \\[default: <out>.ckpt, deleted once the result is written (none with --engine "
        "batched); '' for none]",
    ),
    resume: bool | None = typer.Option(
        None,
        "--resume",
        help=escape(ExperimentConfig.help("resume").rsplit(" [default:", 1)[0])
        + " A killed run: the same command with this flag continues it. \\[default: False]",
    ),
    threads: int | None = typer.Option(None, min=0, help=_help("threads")),
    device: str | None = typer.Option(None, help=_help("device")),
    engine: str = typer.Option(
        "simulation",
        help="simulation: Flower's simulation engine (Ray); local: in this process, same "
        "numbers, faster for quick runs; batched: every client of a round at once, the same "
        "numbers again. Each computes on --device (cpu or cuda).",
    ),
    verbose: bool = typer.Option(False, help="Show Flower's per-round log."),
) -> None:
    """Run one experiment (Flower's simulation engine, or --engine local / batched) and write
    its JSON. The method-dependent options (aggregator, lr, batch size, local epochs,
    momentum, compressor, rounds) default to the method's own (docs/DEFAULTS.md):
    'flwr-byz run --method M --help' shows M's. --preset NAME starts from a standard setup
    (docs/PRESETS.md: data, model, clients, rounds, local training); the --config file's
    options override the preset's, and the flags given override both."""
    given = _collect(
        preset=preset, method=method, aggregator=aggregator, attack=attack, byzantine=byzantine,
        clients=clients, clients_per_round=clients_per_round, rounds=rounds, dataset=dataset,
        partition=partition, model=model, lr=lr, batch_size=batch_size,
        local_epochs=local_epochs, momentum=momentum, weight_decay=weight_decay,
        compressor=compressor, f=f, seed=seed, eval_samples=eval_samples,
        ray_address=ray_address, out=str(out) if out else None, round_timeout=round_timeout,
        injection=injection, checkpoint=checkpoint, resume=resume, threads=threads,
        device=device,
    )  # fmt: skip
    global INTERRUPT_HINT
    INTERRUPT_HINT = None
    _check_name("engine", engine, _engines())
    _check_preset(preset)
    cfg = _config(config, given, param)
    if cfg.out is None:
        name = f"{cfg.method}-{cfg.attack.replace(':', '_')}-b{cfg.byzantine}-s{cfg.seed}.json"
        cfg = dataclasses.replace(cfg, out=str(Path("results") / name))
    # a checkpoint beside the result by default, so that a killed run can resume
    own_checkpoint = cfg.checkpoint is None and engine != "batched"
    if own_checkpoint:
        cfg = dataclasses.replace(cfg, checkpoint=f"{cfg.out}.ckpt")
    elif cfg.checkpoint == "":
        cfg = dataclasses.replace(cfg, checkpoint=None)
    _writable(str(cfg.out), "--out")
    if cfg.checkpoint:
        _writable(cfg.checkpoint, "--checkpoint")
        if not cfg.resume and Path(cfg.checkpoint).exists():
            console.print(
                f"[yellow]note:[/yellow] starting over; the checkpoint {escape(cfg.checkpoint)} "
                "of an earlier run is replaced (--resume continues from it)",
                soft_wrap=True,
            )
        INTERRUPT_HINT = f"progress is kept in {cfg.checkpoint}: add --resume to continue"
    (result,) = _execute([cfg], verbose, engine)
    INTERRUPT_HINT = None
    if own_checkpoint:
        from .simulations.checkpoint import remove

        remove(str(cfg.checkpoint))  # the result is written: nothing left to resume
    _summary([result], "flwr-byz run")
    console.print(f"result written to {cfg.out}")


@app.command(cls=_Command)
def grid(
    method: list[str] = typer.Option(
        ["fedavg", "robust-fedavg"], "--method", help="Methods (repeatable)."
    ),
    aggregator: list[str] = typer.Option(
        ["median", "nnm+krum"], "--aggregator", help="Aggregators of robust methods (repeatable)."
    ),
    attack: list[str] = typer.Option(
        ["none", "alie", "sign-flip"], "--attack", help="Attacks (repeatable; 'none' included)."
    ),
    byzantine: list[int] = typer.Option([4], "--byzantine", help="Byzantine counts (repeatable)."),
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="TOML file of the shared options (clients, rounds, dataset...).",
    ),
    preset: str | None = typer.Option(None, help=_help("preset")),
    clients: int | None = typer.Option(None, help=_help("clients")),
    rounds: int | None = typer.Option(None, help=_help("rounds")),
    dataset: str | None = typer.Option(None, help=_help("dataset")),
    partition: str | None = typer.Option(None, help=_help("partition")),
    model: str | None = typer.Option(None, help=_help("model")),
    lr: float | None = typer.Option(None, help=_help("lr")),
    seed: int | None = typer.Option(None, help=_help("seed")),
    eval_samples: int | None = typer.Option(None, min=0, help=_help("eval_samples")),
    param: list[str] = typer.Option([], "--param", help="Method hyperparameter name=value."),
    ray_address: str | None = typer.Option(None, help=_help("ray_address")),
    threads: int | None = typer.Option(None, min=0, help=_help("threads")),
    out_dir: Path = typer.Option(
        Path("results/grid"),
        help="Where results.md, heatmap.png and runs/ (one JSON per run, kept as each finishes "
        "and reused by a rerun of the same grid) go.",
    ),
    device: str | None = typer.Option(None, help=_help("device")),
    engine: str = typer.Option(
        "simulation",
        help="simulation (Ray), local (in-process) or batched (every client of a round at once).",
    ),
    verbose: bool = typer.Option(False, help="Show Flower's per-round log."),
) -> None:
    """Run methods x attacks x Byzantine counts; write results.md and heatmap.png.

    Under backdoor attacks (e.g. badnets) results.md also has attack-success-rate tables and
    asr_heatmap.png is written.

    --preset NAME starts every run from a standard setup (docs/PRESETS.md); the --config
    file and the flags override it. The 'none' column of a Byzantine count b is the run where
    those b clients behave honestly, so the robust rules are set for the same f as under
    attack. A count of 0 runs 'none' only.
    Each run's result is written to OUT_DIR/runs/ as soon as it finishes, named by a hash of
    its config; an interrupted grid run again reuses those and runs only the rest.
    """
    from .simulations.methods import uses_aggregator
    from .simulations.plots import plot_heatmap
    from .simulations.report import cells_from_results, grid_markdown, has_asr

    shared = _collect(
        preset=preset, clients=clients, rounds=rounds, dataset=dataset, partition=partition,
        model=model, lr=lr, seed=seed, ray_address=ray_address, threads=threads, device=device,
        eval_samples=eval_samples,
    )  # fmt: skip
    _check_name("engine", engine, _engines())
    _check_preset(preset)
    base = _config(config, shared, param)
    defences = [
        (m, a)
        for m in method
        for a in (aggregator if uses_aggregator(m) else [base.aggregator or _own_rule(m)])
    ]
    global INTERRUPT_HINT
    INTERRUPT_HINT = None
    configs = []
    for m, agg in defences:
        # a preset's local-training options depend on the method (docs/PRESETS.md)
        method_base = _config(config, shared | {"method": m}, param) if base.preset else base
        for att, b in [(a, b) for b in byzantine for a in attack if a == "none" or b > 0]:
            name = f"{m}-{agg}-{att}-b{b}".replace(":", "_").replace("+", "_")
            cfg = dataclasses.replace(
                method_base, method=m, aggregator=agg, attack=att, byzantine=b
            )
            try:
                digest = run_digest(cfg.resolved().to_dict())
            except ValueError as exc:
                raise _fail(str(exc)) from exc
            configs.append(
                dataclasses.replace(cfg, out=str(out_dir / "runs" / f"{name}-{digest}.json"))
            )
    if not configs:
        raise _fail("the grid has no runs (a Byzantine count of 0 runs the attack 'none' only)")
    _writable_dir(out_dir, "--out-dir")
    _writable_dir(out_dir / "runs", "--out-dir", name="run.json")
    finished = {i: r for i, r in enumerate(map(_finished, configs)) if r is not None}
    if finished:
        console.print(
            f"reusing {len(finished)} of {len(configs)} finished runs in "
            f"{escape(str(out_dir / 'runs'))}",
            soft_wrap=True,
        )
    todo = [cfg for i, cfg in enumerate(configs) if i not in finished]
    INTERRUPT_HINT = (
        f"finished runs are kept in {out_dir / 'runs'}; the same grid command reuses them"
    )
    new = iter(_execute(todo, verbose, engine) if todo else [])
    INTERRUPT_HINT = None
    results = [finished[i] if i in finished else next(new) for i in range(len(configs))]
    cells = cells_from_results([r.to_dict() for r in results])
    setup = f"{base.dataset}, {_rounds_of(results)} rounds"
    markdown = grid_markdown(cells, title=f"final accuracy (%), {setup}")
    written = [out_dir / "results.md", out_dir / "heatmap.png"]
    if has_asr(cells):  # backdoor attacks: the attack success rate too (lower is better)
        title = f"final attack success rate (%), {setup}"
        markdown += "\n" + grid_markdown(cells, title=title, metric="asr")
        written.append(plot_heatmap(cells, out_dir / "asr_heatmap.png", metric="asr"))
    write_text(out_dir / "results.md", markdown)
    plot_heatmap(cells, out_dir / "heatmap.png")
    _summary(results, "flwr-byz grid")
    console.print(f"wrote {', '.join(str(p) for p in written[:-1])} and {written[-1]}")


def _own_rule(method: str) -> str:
    """The aggregator a method takes by default (a name for the methods that take none)."""
    from .simulations.defaults import METHOD_DEFAULTS

    defaults = METHOD_DEFAULTS.get(method)
    return defaults.aggregator if defaults else "default"


def _rounds_of(results: Sequence[Any]) -> str:
    """The rounds of the runs (methods default to their own): "30" or "30/40"."""
    return "/".join(str(r) for r in sorted({int(x.config["rounds"]) for x in results}))


@app.command(cls=_Command)
def plot(
    files: list[Path] = typer.Argument(
        ..., exists=True, dir_okay=False, help="Result JSON files (from run/grid)."
    ),
    out: Path = typer.Option(Path("results/curves.png"), help="PNG to write."),
    metric: str = typer.Option("accuracy", help="The metric on the y axis."),
    x: str = typer.Option("round", help="The x axis (all but round are cumulative)."),
    title: str | None = typer.Option(None, help="Plot title. \\[default: from the metric]"),
) -> None:
    """Draw curves of one metric from result files into a PNG."""
    from .simulations.plots import plot_curves
    from .simulations.report import run_label

    _writable(out, "--out")
    curves = []
    for path in files:
        data = json.loads(path.read_text())
        cfg = data["config"]
        attack = cfg.get("attack", "none") if cfg.get("byzantine") else "none"
        curves.append((f"{run_label(cfg)} ({attack})", data))
    try:
        path = plot_curves(curves, out, metric=metric, x=x, title=title)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"wrote {path}")


DEMO_RUNS = (
    ("fedavg", "mean", False),  # the reference: no attack
    ("fedavg", "mean", True),
    ("robust-fedavg", "cwmed", True),
    ("robust-fedavg", "nnm+krum", True),
)


@app.command(cls=_Command)
def demo(
    out_dir: Path = typer.Option(Path("results/demo"), help="Where the JSON files and PNG go."),
    rounds: int = typer.Option(30, help="Rounds of each run."),
    attack: str = typer.Option(
        "alie:z=20",
        help="Attack of the 4 Byzantine clients. ALIE's own z for 20 clients and 4 Byzantine "
        "(0.39) hides inside the honest spread and leaves FedAvg unharmed on IID data; z=20 "
        "breaks it.",
    ),
    verbose: bool = typer.Option(False, help="Show Flower's per-round log."),
) -> None:
    """The flagship experiment: MNIST-1D, 20 clients of which 4 Byzantine (ALIE): FedAvg vs
    RobustFedAvg(CWMed) vs RobustFedAvg(NNM+Krum), with FedAvg without attack as reference.
    Writes one JSON per run and accuracy.png to OUT_DIR."""
    from .simulations.plots import plot_curves
    from .simulations.report import run_label

    _writable_dir(out_dir, "--out-dir", name="accuracy.png")
    configs = []
    for method, aggregator, attacked in DEMO_RUNS:
        att, b = (attack, 4) if attacked else ("none", 0)
        name = f"{method}-{aggregator}-{att}".replace("+", "_").replace(":", "_")
        configs.append(
            ExperimentConfig(
                method=method,
                aggregator=aggregator,
                attack=att,
                byzantine=b,
                clients=20,
                rounds=rounds,
                dataset="mnist1d",
                lr=0.05,  # the local-SGD settings the demo was made with, explicit
                batch_size=32,
                local_epochs=2,
                momentum=0.9,
                out=str(out_dir / f"{name}.json"),
            )
        )
    results = _execute(configs, verbose)
    _summary(results, f"flwr-byz demo: MNIST-1D, 20 clients, 4 Byzantine, {attack}")
    curves = []
    for r in results:
        tag = f"4 Byzantine, {r.config['attack']}" if r.config["byzantine"] else "no attack"
        curves.append((f"{run_label(r.config)} ({tag})", r.to_dict()))
    png = plot_curves(
        curves, out_dir / "accuracy.png", title=f"MNIST-1D, 20 clients: test accuracy ({attack})"
    )
    console.print(f"wrote {len(results)} result files and {png}")


@app.command(cls=_Command)
def deploy(
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="TOML file of options."
    ),
    nodes: int | None = typer.Option(None, "--nodes", help="Number of SuperNodes [default: 5]."),
    byzantine: int | None = typer.Option(None, help="Byzantine SuperNodes among them."),
    attack: str | None = typer.Option(
        None, help="Per-node attack of the Byzantine SuperNodes (e.g. sign-flip, label-flip)."
    ),
    method: str | None = typer.Option(None, help=_help("method")),
    aggregator: str | None = typer.Option(None, help=_help("aggregator")),
    rounds: int | None = typer.Option(None, help=_help("rounds")),
    dataset: str | None = typer.Option(None, help=_help("dataset")),
    partition: str | None = typer.Option(None, help=_help("partition")),
    model: str | None = typer.Option(None, help=_help("model")),
    lr: float | None = typer.Option(None, help=_help("lr")),
    batch_size: int | None = typer.Option(None, help=_help("batch_size")),
    local_epochs: int | None = typer.Option(None, help=_help("local_epochs")),
    compressor: str | None = typer.Option(None, help=_help("compressor")),
    f: int | None = typer.Option(None, "--f", help=_help("f")),
    seed: int | None = typer.Option(None, help=_help("seed")),
    eval_samples: int | None = typer.Option(None, min=0, help=_help("eval_samples")),
    param: list[str] = typer.Option(
        [], "--param", help="Method hyperparameter name=value (repeatable). \\[default: none]"
    ),
    round_timeout: float = typer.Option(
        120.0, help="Seconds a round waits for replies; a node lost mid-round is counted missing."
    ),
    checkpoint: str | None = typer.Option(None, help=_help("checkpoint")),
    resume: bool = typer.Option(False, "--resume", help=_help("resume")),
    device: str | None = typer.Option(None, help=_help("device")),
    out: Path = typer.Option(Path("results/deploy.json"), help="Result JSON path."),
    workdir: Path | None = typer.Option(
        None,
        help="Credentials, FLWR_HOMEs and logs (an existing DIR gets a new subdirectory). "
        "\\[default: a new temporary directory]",
    ),
    keep_workdir: bool = typer.Option(
        False,
        "--keep-workdir",
        help="Keep the work directory (private keys, logs) at the end instead of deleting it.",
    ),
    app_dir: Path | None = typer.Option(
        None,
        "--app",
        help="A Flower App directory to run. \\[default: one written to the work directory, "
        "running the installed flwr_byz]",
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="No TLS and no SuperNode authentication: for local tests only, never on a network.",
    ),
) -> None:
    """Run one experiment on a real SuperLink and SuperNodes on 127.0.0.1 (separate
    processes; TLS from a generated CA and SuperNode authentication unless --insecure), then
    stop them all. See docs/DEPLOYMENT.md for the same on real hosts."""
    from flwr_byz.deployment import handle_termination
    from flwr_byz.deployment.deploy import DeploymentError, check_attack, find_app
    from flwr_byz.deployment.deploy import deploy as run_deployment
    from flwr_byz.interrupt import note

    from .simulations.devices import resolve_device
    from .simulations.runner import prepare

    if insecure:  # what --insecure gives up is said before anything else is checked
        console.print(
            "[yellow]warning:[/yellow] --insecure: no TLS and no SuperNode authentication. "
            "Anyone who can reach the port can join and read the traffic; local tests only."
        )
    given = _collect(
        clients=nodes if nodes is not None else (None if config else 5), byzantine=byzantine,
        attack=attack, method=method, aggregator=aggregator, rounds=rounds, dataset=dataset,
        partition=partition, model=model, lr=lr, batch_size=batch_size,
        local_epochs=local_epochs, compressor=compressor, f=f, seed=seed,
        round_timeout=round_timeout, checkpoint=checkpoint, resume=resume or None, out=str(out),
        device=device, eval_samples=eval_samples,
    )  # fmt: skip
    cfg = _config(config, given, param)
    try:  # every argument checked before any progress is drawn (deploy takes it as it is)
        cfg = prepare(dataclasses.replace(cfg, injection="nodes"))
        check_attack(cfg)
        resolve_device(cfg.device)
        if app_dir is not None:
            find_app(app_dir)
    except (ValueError, DeploymentError) as exc:
        raise _fail(str(exc)) from exc
    _writable(str(cfg.out), "--out")
    if cfg.checkpoint:
        _writable(cfg.checkpoint, "--checkpoint")
        global INTERRUPT_HINT
        INTERRUPT_HINT = f"progress is kept in {cfg.checkpoint}: add --resume to continue"
    progress = Progress(
        TextColumn("deploy"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("deploy", total=cfg.rounds, acc="—")

    def on_round(r: int, total: int, accuracy: float) -> None:
        progress.update(task, completed=r, total=total, acc=f"{100 * accuracy:.1f}%")
        note(f"after round {r} of {total}")  # for the interrupt message

    work: list[Path] = []
    try:
        with handle_termination(), progress:
            result = run_deployment(
                cfg,
                workdir=workdir,
                insecure=insecure,
                app=app_dir,
                on_round=on_round,
                keep_workdir=keep_workdir,
                on_workdir=work.append,
            )
    except (ValueError, DeploymentError, TimeoutError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    finally:  # on success, error, Ctrl-C and SIGTERM alike
        if keep_workdir and work:
            kept = f"work directory kept (private keys, logs): {escape(str(work[0]))}"
            console.print(kept, soft_wrap=True)  # one line, however long the path
    _summary([result], "flwr-byz deploy")
    console.print(
        f"tls={result.config['tls']} auth={result.config['auth']} "
        f"missing replies={result.final.get('missing', 0)}; result written to {out}"
    )


@app.command(cls=_Command)
def reproduce(
    targets: list[str] = typer.Argument(
        None,
        help="Sections to regenerate: the papers' claims, the attack x defence matrix, the "
        "backdoor matrix, the performance report; 'all' is every one. \\[default: all]",
    ),
    quick: bool = typer.Option(
        False, help="A few rounds and seeds: checks the pipeline, gives no results."
    ),
    jobs: int = typer.Option(2, min=1, help="Parallel processes running the experiments."),
    engine: str = typer.Option(
        "batched",
        help="batched (every client of a round at once) or local (in-process); FLTrust's runs "
        "always take local (the batched engine has no FLTrust driver).",
    ),
    device: str = typer.Option(
        "cpu",
        help="cpu or cuda[:N]: every run computes there; GPU runs are stored apart and get "
        "their own section of RESULTS.md.",
    ),
    work: Path = typer.Option(
        Path("results/reproduce"), help="Where the runs and sections are kept (resumable)."
    ),
    docs: Path | None = typer.Option(
        None,
        help="Where RESULTS.md and img/ go. \\[default: docs/, or <work>/quick/docs with --quick]",
    ),
) -> None:
    """Regenerate docs/RESULTS.md: the papers' claims, the attack x defence and backdoor
    matrices and the performance report, offline. Runs already in WORK are reused; delete it
    to start over."""
    from .reproduce import Budget, resolve_targets
    from .reproduce import reproduce as run_reproduce

    _check_name("engine", engine, POOL_ENGINES)
    from .simulations.devices import resolve_device

    try:
        resolve_device(device)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    try:
        names = resolve_targets(targets or [])
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    out_docs = docs if docs is not None else (work / "quick" / "docs" if quick else Path("docs"))
    _writable_dir(work, "--work", name="sections.json")
    _writable_dir(out_docs, "--docs", name="RESULTS.md")
    global INTERRUPT_HINT
    INTERRUPT_HINT = f"finished runs are kept in {work}; the same command continues from them"
    path = run_reproduce(
        names,
        Budget.make(quick=quick, jobs=jobs, engine=engine, device=device),
        work,
        out_docs,
        echo=console.print,
    )
    console.print(f"wrote {path}")


@app.command("defaults-sweep", cls=_Command)
def defaults_sweep(
    method: list[str] = typer.Option(
        [], "--method", help="Methods to sweep (repeatable). \\[default: every method]"
    ),
    jobs: int = typer.Option(2, min=1, help="Parallel processes running the experiments."),
    engine: str = typer.Option(
        "batched", help="batched (every client of a round at once) or local (in-process)."
    ),
    work: Path = typer.Option(
        Path("results/defaults-sweep"),
        help="Where the runs are kept (runs/<method>-<hash>.json; a rerun reuses them).",
    ),
    docs: Path = typer.Option(Path("docs"), help="Where DEFAULTS.md goes."),
) -> None:
    """Choose each method's defaults: a small grid (lr x batch size x aggregator x a method
    knob) on digits, 40 rounds, 20 clients, without attack and under sign-flip, ALIE, IPM and
    label-flip with 4 Byzantine; the best worst-case accuracy wins. Writes DEFAULTS.md in DOCS
    and names the methods whose DEFAULTS (flwr_byz/methods/) differ from the choice."""
    from .reproduce.defaults_sweep import GRIDS, differences, sweep, write_docs

    _check_name("engine", engine, POOL_ENGINES)
    for name in method:  # all of them before the first method's sweep starts
        _check_name("method", name, list(GRIDS))
    _writable_dir(work / "runs", "--work", name="run.json")
    _writable_dir(docs, "--docs", name="DEFAULTS.md")
    global INTERRUPT_HINT
    INTERRUPT_HINT = f"finished runs are kept in {work}; the same command continues from them"
    try:
        choices = sweep(work, method or None, jobs=jobs, engine=engine, echo=console.print)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    INTERRUPT_HINT = None
    console.print(f"wrote {write_docs(choices, docs, engine)}")
    for line in differences(choices):
        console.print(f"[yellow]note:[/yellow] {escape(line)}", soft_wrap=True)


@app.command(cls=_Command)
def aggregators() -> None:
    """List the aggregator names usable in spec strings (e.g. 'bucketing:2+median')."""
    from .aggregators.registry import aggregator_names

    for label, names in aggregator_names().items():
        typer.echo(f"{label}: {', '.join(names)}")


@app.command(cls=_Command)
def presets() -> None:
    """List the presets of 'run --preset' / 'grid --preset' with the options each sets
    (docs/PRESETS.md: sources, expected accuracy, seconds per round)."""
    from .simulations.presets import PRESETS

    for preset in PRESETS.values():
        typer.echo(f"{preset.name}: {preset.summary}")
        typer.echo("  " + ", ".join(f"{k}={v}" for k, v in preset.setup.items()))
        local = ", ".join(f"{k}={v}" for k, v in preset.local_sgd.items())
        typer.echo(f"  local training (fedavg, robust-fedavg, fltrust, flower-*): {local}")


@app.command("data", cls=_Command)
def data(
    action: str = typer.Argument(
        ...,
        help="'fetch': load the data set once, with network for a hub one, into the Hugging "
        "Face cache and flwr-byz's cache of decoded arrays, so that later runs (offline, or in "
        "many processes) read it from there.",
    ),
    spec: str = typer.Argument(
        ..., help="Dataset spec, e.g. hf:uoft-cs/cifar10, hf:flwrlabs/femnist, local:<dir>."
    ),
) -> None:
    """Prepare a data set before running: 'flwr-byz data fetch hf:<name>'."""
    if action != "fetch":
        raise _fail(f"unknown data action {action!r}; known: fetch")
    from .simulations.datasets import load_dataset

    try:
        loaded = load_dataset(spec)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    parts = [
        f"{len(loaded.x_train)} train / {len(loaded.x_test)} test samples",
        f"input {tuple(loaded.input_shape)}",
        f"{loaded.num_classes} classes",
    ]
    if loaded.vocab_size is not None:
        parts.append(f"vocabulary {loaded.vocab_size}")
    if loaded.natural_ids:
        parts.append(f"id columns (natural:<column>): {', '.join(loaded.natural_ids)}")
    console.print(f"{escape(loaded.name)}: {escape(', '.join(parts))}; cached", soft_wrap=True)


@app.command(cls=_Command)
def attacks() -> None:
    """List the attack names usable in specs (e.g. 'alie:z=1.5', 'sign-flip:scale=10')."""
    for name, cls in ATTACKS.items():
        kind = "omniscient" if getattr(cls, "omniscient", False) else "per-node"
        kind = "data" if getattr(cls, "data_attack", False) else kind
        kind = "backdoor" if getattr(cls, "backdoor", False) else kind
        typer.echo(f"{name:<18} {kind}")


@app.command("models", cls=_Command)
def models_() -> None:
    """List the models (--model) with their parameter counts on each data set they fit
    ('*': the one --model auto picks there)."""
    from .simulations.models import format_model_table

    typer.echo(format_model_table())


def flower_leftovers(flwr_home: Path | None = None) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the local SuperLink that ``flwr run`` started in the
    background (``flower-superlink`` with ``--log-file FLWR_HOME/local-superlink/superlink.log``,
    run by this user) and of every process below it (the apps it started); none of this
    process's own ancestors. Linux (``/proc``); empty elsewhere."""
    import itertools
    import os

    from flwr_byz.interrupt import descendants

    home = flwr_home or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    log_file = str(home / "local-superlink" / "superlink.log")
    spared = {os.getpid(), os.getppid()}

    def command(pid: int) -> list[str] | None:
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                return None
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]

    def is_superlink(argv: list[str]) -> bool:
        names = {Path(a).name for a in argv[:2]}  # the executable, or a script's interpreter
        pairs = set(itertools.pairwise(argv))
        return "flower-superlink" in names and ("--log-file", log_file) in pairs

    try:
        pids = sorted(int(e) for e in os.listdir("/proc") if e.isdigit())
    except OSError:
        return []
    found: dict[int, str] = {}
    for pid in pids:
        argv = command(pid)
        if pid in spared or not argv or not is_superlink(argv):
            continue
        for member in [pid, *descendants(pid)]:
            member_argv = command(member)
            if member not in spared and member_argv:
                found.setdefault(member, " ".join(member_argv))
    return list(found.items())


@app.command(cls=_Command)
def stop(
    yes: bool = typer.Option(
        False, "--yes", help="Stop them (SIGTERM, SIGKILL after 10 s); without it, list only."
    ),
) -> None:
    """List, and with --yes stop by PID, what 'flwr run' left running: the local SuperLink it
    starts in the background (under $FLWR_HOME, default ~/.flwr) and the processes below it.
    Only those processes, and only this user's ('flwr-byz run' and 'deploy' stop their own)."""
    import signal
    import time

    from flwr_byz.interrupt import alive, send_signal

    found = flower_leftovers()
    if not found:
        console.print("nothing to stop: no local SuperLink of 'flwr run' is running")
        return
    console.print(f"{len(found)} process(es) left by 'flwr run':")
    for pid, command in found:
        console.print(f"  {pid:>7}  {escape(command)}", soft_wrap=True, highlight=False)
    if not yes:
        console.print("add --yes to stop them")
        return
    pids = [pid for pid, _ in found]
    send_signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    send_signal([p for p in pids if alive(p)], signal.SIGKILL)
    console.print(f"stopped {', '.join(map(str, pids))}")


#: ``flwr-byz bench`` suites: the modules ``flwr_byz.bench.<suite>`` (installed with the package).
BENCHMARKS = ("aggregators", "engines", "presets")


@app.command(cls=_Command)
def bench(
    suite: str = typer.Argument(
        "aggregators",
        help="aggregators: our rules vs Flower and ByzFL (speed, memory); engines: seconds per "
        "round of the simulation, local and batched engines vs a plain torch loop; presets: "
        "seconds per round of each --preset on stand-in data of its shapes (docs/PRESETS.md).",
    ),
    quick: bool = typer.Option(
        False,
        help="A small run: aggregators n=20, d=100k; engines MLP, 20 clients, 3 rounds; presets "
        "20 samples per client.",
    ),
    out: Path | None = typer.Option(
        None,
        help="Where to write the JSON results. \\[default: benchmarks/results/SUITE.json under "
        "the current directory]",
    ),
    device: str = typer.Option(
        "cpu",
        help="Device of our rules (aggregators) or of the batched engine (engines; "
        "'cpu,cuda' runs it on both).",
    ),
) -> None:
    """Run a benchmark (``flwr_byz.bench``): aggregators, engines or presets.

    It runs as ``python -m flwr_byz.bench.SUITE`` in a process of its own (its thread settings
    and peak-memory probes see only the benchmark)."""
    _check_name("benchmark", suite, BENCHMARKS)
    devices = device.split(",")
    for part in devices:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", part):
            raise _fail(str(unknown("device", part, DEVICES)))
    if suite == "aggregators" and len(devices) > 1:
        raise _fail(f"--device {device}: the aggregators benchmark takes one device")
    target = out if out is not None else Path("benchmarks/results") / f"{suite}.json"
    _writable(target, "--out")
    module = f"flwr_byz.bench.{suite}"
    args = [sys.executable, "-m", module, "--out", str(target), "--device", device]
    raise typer.Exit(_call(args + (["--quick"] if quick else [])))


def _call(args: list[str]) -> int:
    """Run ``args`` and return its exit code. The child ignores SIGINT: on Ctrl-C this
    process stops it (SIGTERM), rather than the child printing a traceback of its own."""
    from flwr_byz.interrupt import children_ignore_sigint

    with children_ignore_sigint():
        child = subprocess.Popen(args)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    app()
