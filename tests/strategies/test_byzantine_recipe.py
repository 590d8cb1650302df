"""The README's recipe "Byzantine nodes in your own Flower app", applied and run.

The edits are read from the README itself (its ``python`` and ``toml`` blocks and its
``flwr run`` command) and applied to a copy of the standard app (``standard_app/``, the
``flwr new`` PyTorch app) in a temporary directory, with the ``pyproject.toml`` ``flwr new``
writes. The app runs in Flower's simulation engine in this process (``_run_simulation``, the
function behind ``flwr run``'s simulation runtime), the ClientApp loaded from the copied
app's directory and every node's run config fused from its ``pyproject.toml`` with the
command's overrides by Flower's own code (the check that refuses undeclared keys).
10 nodes, 2 Byzantine (sign-flip x10), 10 rounds, every node sampled.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common.config import get_fused_config_from_dir, parse_config_args
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

from flwr_byz.deployment import LocalDeployment, NodeSpec
from flwr_byz.protocol import BYZANTINE_REPLIES_KEY, sum_byzantine_replies
from flwr_byz.strategies import RobustFedAvg

from .harness import _evaluate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STANDARD_APP = Path(__file__).resolve().parent / "standard_app"
NODES, ROUNDS = 10, 10
SECTION = "## Byzantine nodes in your own Flower app"

# The pyproject.toml `flwr new` writes for the PyTorch app (its name and package: recipeapp).
PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "recipeapp"
version = "1.0.0"
dependencies = ["flwr[simulation]>=1.42.0", "torch"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "me"

[tool.flwr.app.components]
serverapp = "recipeapp.server_app:app"
clientapp = "recipeapp.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
fraction-train = 0.5
local-epochs = 1
lr = 0.01
"""


# The ServerApp `flwr new` writes (without its final `torch.save`, which would write into the
# SuperLink's working directory); the recipe's step 3 edits the strategy line.
SERVER_APP = """\
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from recipeapp.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    fraction_train: float = context.run_config["fraction-train"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["lr"]
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())
    strategy = FedAvg(fraction_train=fraction_train)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
    )
"""


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end > 0 else None]


def code_blocks(section: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of ``section``, dedented."""
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", section, flags=re.M | re.S)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in blocks]


def simulation_overrides(section: str) -> str:
    """The ``--run-config`` string of the README's ``flwr run`` (simulation) command."""
    match = re.search(r'flwr run \. (?:[^\n]|\\\n)*?--run-config "([^"]+)"', section)
    assert match, "the README shows no `flwr run . --run-config` command"
    return match.group(1)


def apply_recipe(directory: Path, section: str, declare: bool = True) -> Path:
    """A copy of the standard app with the README's edits; the app's directory."""
    app_dir = directory / "recipe"
    package = app_dir / "recipeapp"
    shutil.copytree(STANDARD_APP, package, ignore=shutil.ignore_patterns("__pycache__"))
    python = next(b for b in code_blocks(section, "python") if "ClientApp(mods=" in b)
    imports = [line for line in python.splitlines() if line.startswith("from ")]
    new_app = next(line for line in python.splitlines() if line.startswith("app = "))
    client = package / "client_app.py"
    source = client.read_text()
    assert "app = ClientApp()\n" in source
    source = source.replace("app = ClientApp()\n", new_app.split("#")[0].rstrip() + "\n")
    source = source.replace(
        "from flwr.clientapp import ClientApp\n",
        "from flwr.clientapp import ClientApp\n" + "\n".join(imports) + "\n",
    )
    client.write_text(source)
    server = next(b for b in code_blocks(section, "python") if "train_metrics_aggr_fn" in b)
    strategy = next(line for line in server.splitlines() if line.startswith("strategy = "))
    server_source = SERVER_APP.replace(
        "    strategy = FedAvg(fraction_train=fraction_train)\n", f"    {strategy}\n"
    )
    assert strategy in server_source
    server_imports = [line for line in server.splitlines() if line.startswith("from ")]
    (package / "server_app.py").write_text("\n".join(server_imports) + "\n" + server_source)
    pyproject = PYPROJECT
    if declare:
        (toml,) = code_blocks(section, "toml")
        pyproject += toml
    (app_dir / "pyproject.toml").write_text(pyproject)
    return app_dir


def test_undeclared_keys_are_refused_and_declared_ones_fused(tmp_path: Path) -> None:
    """Flower's own check (what ``flwr run`` meets as "[code: 15] Invalid run
    configuration"): the overrides need the README's declaration."""
    section = readme_section()
    overrides = parse_config_args([simulation_overrides(section)])
    plain = apply_recipe(tmp_path / "plain", section, declare=False)
    with pytest.raises(ValueError, match="byzantine-"):
        get_fused_config_from_dir(plain, overrides)
    declared = apply_recipe(tmp_path / "declared", section)
    config = get_fused_config_from_dir(declared, overrides)
    assert config["byzantine-attack"] == "sign-flip:scale=10"
    assert config["byzantine-num-nodes"] == 2
    assert get_fused_config_from_dir(declared, {})["byzantine-attack"] == "none"


def _server(out: dict[str, Any]) -> ServerApp:
    """Flower's FedAvg as the README's step 3 sets it up, then RobustFedAvg (median), each a
    full training from the same initial model."""
    from recipeapp.task import Net  # type: ignore[import-not-found]  (the copied app)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategies = {
            "FedAvg": FedAvg(
                fraction_train=1.0,
                fraction_evaluate=0.0,
                train_metrics_aggr_fn=sum_byzantine_replies,
            ),
            "median": RobustFedAvg("median", f=2, fraction_train=1.0, fraction_evaluate=0.0),
        }
        for name, strategy in strategies.items():
            import torch

            torch.manual_seed(0)
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(Net().state_dict()),
                num_rounds=ROUNDS,
                train_config=ConfigRecord({"lr": 0.1}),
                evaluate_fn=_evaluate,
            )
            curve = result.evaluate_metrics_serverapp
            out[name] = {
                "accuracy": float(curve[max(curve)]["accuracy"]),
                "counts": {
                    r: m.get(BYZANTINE_REPLIES_KEY)
                    for r, m in result.train_metrics_clientapp.items()
                },
            }

    return server


def _simulate(app_dir: Path, overrides: str) -> dict[str, Any]:
    run = Run.create_empty(run_id=1234)  # as run_simulation makes it
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    run.override_config = parse_config_args([overrides])
    out: dict[str, Any] = {}
    server_context = Context(
        run_id=run.run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=get_fused_config_from_dir(app_dir, run.override_config),
    )
    _run_simulation(
        num_supernodes=NODES,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app=_server(out),
        server_app_context=server_context,
        client_app_attr="recipeapp.client_app:app",
        app_dir=str(app_dir),
        is_app=True,
        run=run,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    return out


BYZANTINE_LINE = re.compile(
    r"byzantine_mod: node (\d+) \(partition-id (\d+)\) is Byzantine: attack (\S+) "
    r"\(from the run config: byzantine-num-nodes=2\)"
)


def test_the_recipe_runs_with_k_byzantine_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import ray._private.ray_logging as ray_logging

    # Ray folds log lines that differ only in numbers ("node 51 ...", "node 52 ...") into one
    monkeypatch.setattr(ray_logging, "RAY_DEDUP_LOGS", False)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    section = readme_section()
    app_dir = apply_recipe(tmp_path, section)
    monkeypatch.syspath_prepend(str(app_dir))
    out = _simulate(app_dir, simulation_overrides(section))
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    print("\n".join(line for line in logs.splitlines() if "is Byzantine" in line))
    lines = BYZANTINE_LINE.findall(logs)
    # one line per Byzantine node for the whole run (two trainings, 20 rounds, 40 messages)
    assert sorted(p for _, p, _ in lines) == ["0", "1"], lines
    assert len({node for node, _, _ in lines}) == 2
    assert {attack for _, _, attack in lines} == {"sign-flip:scale=10"}
    for name in ("FedAvg", "median"):
        assert out[name]["counts"] == {r: 2 for r in range(1, ROUNDS + 1)}
        assert sum(out[name]["counts"].values()) == 2 * ROUNDS
    print({name: (run["accuracy"], run["counts"]) for name, run in out.items()})
    assert out["FedAvg"]["accuracy"] < 0.3  # sign-flip x10 on 2 of 10 nodes breaks FedAvg
    assert out["median"]["accuracy"] > 0.8  # the same nodes, a robust rule: it learns


def _node_specs(section: str) -> list[NodeSpec]:
    """The README's ``flower-supernode ... --node-config "..."`` lines as NodeSpecs."""
    specs = []
    for text in re.findall(r'--node-config "([^"]+)"', section):
        config = parse_config_args([text])
        attack = config.pop("byzantine-attack", None)
        partition, count = config.pop("partition-id"), config.pop("num-partitions")
        specs.append(NodeSpec(partition, count, attack=attack, extra=config))
    return specs


@pytest.mark.deployment
def test_the_recipe_in_a_deployment(tmp_path: Path) -> None:
    """The README's SuperNodes (one Byzantine by its node config) run the edited app on a
    local SuperLink (insecure, as in the README), one round (a train and an evaluate message
    per node, each in a ClientApp process of its own): the Byzantine node's SuperNode logs its
    line once, the others none, and Flower's FedAvg counts 1 Byzantine reply."""
    section = readme_section()
    app_dir = apply_recipe(tmp_path, section)
    nodes = _node_specs(section)
    assert [n.attack for n in nodes] == ["sign-flip", None, None]
    rounds = 1
    config = {"num-server-rounds": rounds, "fraction-train": 1.0, "lr": 0.1}
    with LocalDeployment(tmp_path / "work", nodes, tls=False, auth=False) as deployment:
        run = deployment.run(app_dir, config, timeout=900)
        run_log = run.log.read_text(errors="replace")
        node_logs = [
            (deployment.workdir / "logs" / f"supernode-{i}.log").read_text(errors="replace")
            for i in range(len(nodes))
        ]
    assert run.popen.returncode == 0, run_log[-3000:]
    print(
        "\n".join(
            line for text in node_logs for line in text.splitlines() if "is Byzantine" in line
        )
    )
    lines = [BYZANTINE_DEPLOYED.findall(text) for text in node_logs]
    assert [len(found) for found in lines] == [1, 0, 0], node_logs[0][-3000:]
    assert lines[0][0] == ("0", "sign-flip", "10")
    counts = re.findall(r"'byzantine-replies': ([0-9.]+)", run_log)
    print(counts)
    assert [float(c) for c in counts] == [1.0] * rounds, run_log[-3000:]


BYZANTINE_DEPLOYED = re.compile(
    r"byzantine_mod: node \d+ \(partition-id (\d+)\) is Byzantine: attack (\S+), "
    r"byzantine-scale=(\S+) \(from the node config\)"
)
