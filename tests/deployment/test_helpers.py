"""Fast unit tests of the deployment helpers (no SuperLink or SuperNode is started):
credentials (certificates checked with ``cryptography`` and a real TLS handshake, SuperNode
keys accepted by Flower's own loader), the run-config and node-config strings (parsed the way
Flower parses them), the ``flwr`` connection file and SuperNode command lines, the process
set (trees stopped across sessions, SIGKILL after the grace period) and the ``deploy``
function and command up to the point where processes would start.
"""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

import flwr_byz.deployment.deploy as deploy_module
from flwr_byz.cli import app as cli_app
from flwr_byz.deployment import (
    LocalDeployment,
    ManagedProcess,
    NodeSpec,
    ProcessSet,
    descendants,
    free_port,
    handle_termination,
    make_node_keys,
    make_tls,
    run_config_toml,
)
from flwr_byz.deployment.deploy import DeploymentError, deploy, find_app, node_specs, round_lines
from flwr_byz.deployment.federation import CONNECTION
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.runner import byzantine_partitions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------- helpers
def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid``; None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z")


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture
def no_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ``deploy`` gets as far as constructing a LocalDeployment."""

    def _forbidden(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a LocalDeployment was constructed (processes would start)")

    monkeypatch.setattr(deploy_module, "LocalDeployment", _forbidden)


# ------------------------------------------------------------------------------ credentials
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tls(tmp_path_factory.mktemp("tls"), hosts=("127.0.0.1", "localhost"))


def test_make_tls_server_certificate_is_signed_by_the_ca(tls: Any) -> None:
    ca, server = _cert(tls.ca_cert), _cert(tls.server_cert)
    assert server.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert server.signature_hash_algorithm is not None
    ca_key.verify(
        server.signature,
        server.tbs_certificate_bytes,
        ec.ECDSA(server.signature_hash_algorithm),
    )  # raises InvalidSignature otherwise
    # The CA is self-signed.
    assert ca.signature_hash_algorithm is not None
    ca_key.verify(ca.signature, ca.tbs_certificate_bytes, ec.ECDSA(ca.signature_hash_algorithm))
    # The server key file holds the key the certificate certifies.
    key = serialization.load_pem_private_key(tls.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()


def test_make_tls_extensions_and_validity(tls: Any) -> None:
    ca, server = _cert(tls.ca_cert), _cert(tls.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]

    ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_bc.value.ca is True and ca_bc.critical
    ca_ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_ku.key_cert_sign
    server_bc = server.extensions.get_extension_for_class(x509.BasicConstraints)
    assert server_bc.value.ca is False
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in list(eku)

    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in (ca, server):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        assert cert.not_valid_after_utc - now > datetime.timedelta(days=7)


def test_make_tls_private_key_is_0600_and_file_names(tls: Any) -> None:
    assert _mode(tls.server_key) == 0o600
    assert tls.ca_cert.name == "ca.crt"
    assert tls.server_cert.name == "server.pem"
    assert tls.server_key.name == "server.key"


def test_make_tls_dns_hosts_plus_loopback(tmp_path: Path) -> None:
    """DNS names as given, and 127.0.0.1 always (the SuperLink's SuperExec uses it)."""
    files = make_tls(tmp_path, hosts=("superlink.example.org", "superlink"))
    server = _cert(files.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "superlink"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    with pytest.raises(ValueError, match="at least one host"):
        make_tls(tmp_path / "none", hosts=())
    cn = server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "superlink.example.org"


def test_make_tls_private_key_is_0600_even_over_an_existing_file(tmp_path: Path) -> None:
    stale = tmp_path / "server.key"
    stale.write_text("old")
    stale.chmod(0o644)
    files = make_tls(tmp_path)
    assert _mode(files.server_key) == 0o600


def _tls_server(files: Any) -> tuple[socket.socket, threading.Thread, list[BaseException]]:
    """A one-connection TLS server on 127.0.0.1 that answers b"ok" after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.server_cert), str(files.server_key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls_conn:
                        tls_conn.sendall(b"ok")
                except (ssl.SSLError, OSError) as exc:  # the client rejected us
                    errors.append(exc)
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, errors


def _tls_connect(port: int, cafile: Path, hostname: str) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as conn:
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
            return conn.recv(2)


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_tls_handshake_with_the_generated_ca(tls: Any, hostname: str) -> None:
    listener, thread, errors = _tls_server(tls)
    port = listener.getsockname()[1]
    assert _tls_connect(port, tls.ca_cert, hostname) == b"ok"
    thread.join(10)
    assert not errors


@pytest.mark.parametrize("case", ["unrelated CA", "host not in the certificate"])
def test_tls_handshake_fails(tls: Any, tmp_path: Path, case: str) -> None:
    """An unrelated CA, or a host name the certificate does not name, fails verification."""
    ca = make_tls(tmp_path / "other").ca_cert if case == "unrelated CA" else tls.ca_cert
    host = "127.0.0.1" if case == "unrelated CA" else "superlink.example.org"
    listener, thread, _ = _tls_server(tls)
    port = listener.getsockname()[1]
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_connect(port, ca, host)
    thread.join(10)


def test_make_node_keys_openssh_ecdsa_p384(tmp_path: Path) -> None:
    keys = make_node_keys(tmp_path / "keys", "n0")
    assert keys.private == tmp_path / "keys" / "n0"
    assert keys.public == tmp_path / "keys" / "n0.pub"
    private = serialization.load_ssh_private_key(keys.private.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    public = serialization.load_ssh_public_key(keys.public.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public == private.public_key()
    assert keys.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert _mode(keys.private) == 0o600
    # Two nodes get different keys.
    other = make_node_keys(tmp_path / "keys", "n1")
    assert serialization.load_ssh_public_key(other.public.read_bytes()) != public


def test_flower_accepts_the_node_public_key(tmp_path: Path) -> None:
    keys = make_node_keys(tmp_path, "n0")
    loaded = try_load_public_key(keys.public)
    assert isinstance(loaded, bytes) and loaded
    public = serialization.load_ssh_public_key(keys.public.read_bytes())
    assert loaded == public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_flower_rejects_a_bad_public_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(click.ClickException):
        try_load_public_key(tmp_path / "missing.pub")

    # flwr_exit would sys.exit and arm a thread that os._exit()s this process: replace it.
    class Rejected(Exception):
        pass

    def fake_exit(code: int, message: str | None = None, *args: Any, **kwargs: Any) -> None:
        raise Rejected(code, message)

    # (flwr.cli.supernode.register is also the name of a function: take the module itself)
    module = importlib.import_module("flwr.cli.supernode.register")
    assert module.try_load_public_key is try_load_public_key
    monkeypatch.setattr(module, "flwr_exit", fake_exit)
    bad = tmp_path / "bad.pub"
    bad.write_text("ecdsa-sha2-nistp384 not-base64-at-all n0\n")
    with pytest.raises(Rejected):
        try_load_public_key(bad)
    # The private key file is not a public key either.
    keys = make_node_keys(tmp_path, "n0")
    with pytest.raises(Rejected):
        try_load_public_key(keys.private)


# ------------------------------------------------------------------------ run-config TOML
def test_run_config_toml_round_trips_scalars() -> None:
    values = {
        "plain": "median",
        "quotes": "say \"hi\" and 'bye'",
        "backslash": r"C:\path\to\x",
        "commas": "a=1,b=2",
        "spec": "nnm+krum:f=2",
        "empty": "",
        "unicode": "na\u00efve \u2013 \u2713",
        "newline": "two\nlines\ttab",
        "int": 42,
        "negative": -1,
        "float": 0.05,
        "whole-float": 30.0,
        "tiny": 1e-12,
        "true": True,
        "false": False,
    }
    text = run_config_toml({**values, "dropped": None})
    parsed = tomllib.loads(text)
    assert parsed == values
    assert "dropped" not in parsed
    for key, value in values.items():
        assert type(parsed[key]) is type(value), key


def test_run_config_toml_of_an_experiment_round_trips() -> None:
    cfg = ExperimentConfig(
        params={"n_servers": 5, "server_attack": "random:scale=2"},
        f=2,
        clients_per_round=3,
        round_timeout=30.0,
        checkpoint="/x/ck.pt",
        resume=True,
        injection="nodes",
        clients=7,
        ray_address="auto",  # not part of the run config
    )
    parsed = tomllib.loads(run_config_toml(cfg.to_run_config()))
    back = ExperimentConfig.from_run_config(parsed, clients=4)
    expected = ExperimentConfig(**{**cfg.to_dict(), "clients": 4, "ray_address": None})
    assert back == expected
    assert back.params == {"n_servers": 5, "server_attack": "random:scale=2"}
    assert back.out is None and back.f == 2 and back.round_timeout == 30.0


def test_run_config_toml_of_the_defaults_round_trips() -> None:
    cfg = ExperimentConfig(clients=3)
    parsed = tomllib.loads(run_config_toml(cfg.to_run_config()))
    assert ExperimentConfig.from_run_config(parsed, clients=3) == cfg


def test_run_config_round_trips_a_param_spec_with_a_comma() -> None:
    cfg = ExperimentConfig(params={"n_servers": 5, "server_attack": "random:scale=2,seed=3"})
    parsed = tomllib.loads(run_config_toml(cfg.to_run_config()))
    back = ExperimentConfig.from_run_config(parsed, clients=cfg.clients)
    assert back.params == cfg.params


# --------------------------------------------------------------------------- node config
def test_node_config_parses_as_flower_parses_node_config() -> None:
    spec = NodeSpec(3, 10, attack="sign-flip:scale=10", extra={"byzantine-seed": 7})
    parsed = parse_config_args([spec.node_config()])
    assert parsed == {
        "partition-id": 3,
        "num-partitions": 10,
        "byzantine-attack": "sign-flip:scale=10",
        "byzantine-seed": 7,
    }
    assert type(parsed["partition-id"]) is int
    assert type(parsed["num-partitions"]) is int
    assert type(parsed["byzantine-seed"]) is int


@pytest.mark.parametrize(
    "attack", ["sign-flip", "gaussian:sigma=2.5", "label-flip", "scale:factor=-3,seed=1"]
)
def test_node_config_attack_specs_survive_flowers_parser(attack: str) -> None:
    parsed = parse_config_args([NodeSpec(0, 2, attack=attack).node_config()])
    assert parsed["byzantine-attack"] == attack


def test_node_config_of_an_honest_node() -> None:
    parsed = parse_config_args([NodeSpec(0, 5).node_config()])
    assert parsed == {"partition-id": 0, "num-partitions": 5}
    assert "byzantine-attack" not in parsed


# --------------------------------------------------------------------------------- deploy
def test_node_specs_attack_exactly_the_byzantine_partitions() -> None:
    cfg = ExperimentConfig(clients=8, byzantine=3, attack="sign-flip", seed=11)
    specs = node_specs(cfg)
    assert [s.partition for s in specs] == list(range(8))
    assert all(s.num_partitions == 8 for s in specs)
    attacked = {s.partition for s in specs if s.attack}
    assert attacked == set(byzantine_partitions(cfg)) and len(attacked) == 3
    for s in specs:
        if s.partition in attacked:
            assert s.attack == "sign-flip" and s.extra == {"byzantine-seed": 11}
        else:
            assert s.attack is None and s.extra == {}


@pytest.mark.parametrize(
    "cfg",
    [
        ExperimentConfig(clients=5, byzantine=2, attack="none"),
        ExperimentConfig(clients=5, byzantine=2, attack=" None "),
        ExperimentConfig(clients=5, byzantine=0, attack="sign-flip"),
    ],
)
def test_node_specs_without_an_attack(cfg: ExperimentConfig) -> None:
    specs = node_specs(cfg)
    assert len(specs) == 5
    assert all(s.attack is None and not s.extra for s in specs)


def test_round_lines_parses_server_app_logs() -> None:
    text = "\n".join(
        [
            "\x1b[92mINFO \x1b[0m:      Starting run 123",
            "\x1b[92mINFO \x1b[0m:      [flwr-byz] round 1/3  accuracy 0.6444  loss 1.8695 "
            "rejected 0 missing 0",
            "INFO :      [flwr-byz] round 2/3  accuracy 0.9611  loss 0.2210",
            "\x1b[92mINFO \x1b[0m:      [flwr-byz] round 3/3  accuracy nan  loss nan",
            "\x1b[92mINFO \x1b[0m:      round 4/3 accuracy 0.5 (not ours)",
        ]
    )
    rounds = round_lines(text)
    assert [(r, n) for r, n, _ in rounds] == [(1, 3), (2, 3), (3, 3)]
    assert rounds[0][2] == pytest.approx(0.6444)
    assert rounds[1][2] == pytest.approx(0.9611)
    assert rounds[2][2] != rounds[2][2]  # nan
    assert round_lines("[flwr-byz] round 3/10  accuracy 0.9611  loss 0.1") == [(3, 10, 0.9611)]
    assert round_lines("") == []


def test_find_app() -> None:
    assert find_app(ROOT) == ROOT  # a source checkout is a Flower App (`flwr run .`)
    assert find_app(str(ROOT)) == ROOT


def test_find_app_without_a_flower_app(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="--app"):
        find_app(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(DeploymentError, match="--app"):
        find_app(tmp_path)


def test_deploy_needs_out(no_deployment: None) -> None:
    with pytest.raises(ValueError, match="out"):
        deploy(ExperimentConfig(clients=3, dataset="digits"))


def test_deploy_refuses_an_omniscient_attack(tmp_path: Path, no_deployment: None) -> None:
    cfg = ExperimentConfig(
        clients=3, byzantine=1, attack="alie", dataset="digits", out=str(tmp_path / "r.json")
    )
    with pytest.raises(ValueError, match="omniscient"):
        deploy(cfg, workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------------- LocalDeployment
def test_local_deployment_auth_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS"):
        LocalDeployment(tmp_path, [NodeSpec(0, 1)], tls=False, auth=True)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalDeployment]:
    nodes = [NodeSpec(0, 2), NodeSpec(1, 2, attack="sign-flip", extra={"byzantine-seed": 3})]
    dep = LocalDeployment(tmp_path / "work", nodes, tls=True, auth=True)
    yield dep
    dep.stop()
    assert not dep.procs.processes


def _connection(dep: LocalDeployment) -> dict[str, Any]:
    home = Path(dep.cli_env["FLWR_HOME"])
    assert home.is_relative_to(dep.workdir)
    return tomllib.loads((home / "config.toml").read_text())


def test_write_connection_with_tls(deployment: LocalDeployment, tmp_path: Path) -> None:
    deployment.tls_files = make_tls(tmp_path / "certs")
    deployment._write_connection()
    config = _connection(deployment)
    assert config["superlink"]["default"] == CONNECTION
    conn = config["superlink"][CONNECTION]
    assert conn["address"] == f"127.0.0.1:{deployment.port}"
    assert Path(conn["root-certificates"]) == deployment.tls_files.ca_cert
    assert "insecure" not in conn


def test_write_connection_insecure(deployment: LocalDeployment) -> None:
    deployment.tls_files = None
    deployment._write_connection()
    conn = _connection(deployment)["superlink"][CONNECTION]
    assert conn["address"] == f"127.0.0.1:{deployment.port}"
    assert conn["insecure"] is True
    assert "root-certificates" not in conn


def _option(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, (flag, command)
    return command[command.index(flag) + 1]


def test_node_command_with_tls_and_auth(deployment: LocalDeployment, tmp_path: Path) -> None:
    deployment.tls_files = make_tls(tmp_path / "certs")
    deployment.keys[1] = make_node_keys(tmp_path / "keys", "supernode-1")
    command = deployment.node_command(1)
    assert Path(command[0]).name == "flower-supernode"
    assert _option(command, "--superlink") == f"127.0.0.1:{deployment.port}"
    assert _option(command, "--root-certificates") == str(deployment.tls_files.ca_cert)
    assert _option(command, "--auth-supernode-private-key") == str(deployment.keys[1].private)
    assert "--insecure" not in command
    node_config = parse_config_args([_option(command, "--node-config")])
    assert node_config == {
        "partition-id": 1,
        "num-partitions": 2,
        "byzantine-attack": "sign-flip",
        "byzantine-seed": 3,
    }
    assert int(_option(command, "--port")) != deployment.port
    # Another (e.g. unregistered) key replaces the node's own.
    other = make_node_keys(tmp_path / "keys", "stranger")
    command = deployment.node_command(1, private_key=other.private)
    assert _option(command, "--auth-supernode-private-key") == str(other.private)


def test_node_command_insecure(deployment: LocalDeployment) -> None:
    deployment.tls_files = None
    command = deployment.node_command(0)
    assert "--insecure" in command
    assert "--root-certificates" not in command
    assert "--auth-supernode-private-key" not in command  # no key made for node 0
    assert _option(command, "--superlink") == deployment.address
    assert parse_config_args([_option(command, "--node-config")]) == {
        "partition-id": 0,
        "num-partitions": 2,
    }


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


# ----------------------------------------------------------------------------- processes
SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
)
print(child.pid, flush=True)
time.sleep(600)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessSet]:
    started = ProcessSet(tmp_path / "logs")
    yield started
    started.stop_all()


def _grandchild(proc: ManagedProcess) -> int:
    text = _wait_for(lambda: proc.log.read_text().strip(), 20, "the child's PID in the log")
    return int(text.splitlines()[0])


def test_process_tree_across_sessions_is_stopped(procs: ProcessSet) -> None:
    parent = procs.start("spawner", [sys.executable, "-c", SPAWNER])
    grandchild = _grandchild(parent)
    assert os.getsid(parent.pid) == parent.pid  # the set starts it in its own session
    assert os.getsid(grandchild) == grandchild != parent.pid  # and it made another one
    assert grandchild in descendants(parent.pid)
    assert set(parent.tree()) >= {parent.pid, grandchild}
    assert procs.pids() >= {parent.pid, grandchild}

    started = time.monotonic()
    procs.stop_all()
    assert time.monotonic() - started < 5
    assert _gone(parent.pid)
    _wait_for(lambda: _gone(grandchild), 5, "the grandchild to go")
    assert parent.popen.returncode is not None
    assert procs.processes == []
    procs.stop_all()  # a second call is a no-op
    assert procs.pids() == set()


def test_process_ignoring_sigterm_is_killed_after_the_grace(procs: ProcessSet) -> None:
    proc = procs.start("stubborn", [sys.executable, "-c", STUBBORN])
    _wait_for(lambda: "ready" in proc.log.read_text(), 20, "the handler to be installed")
    started = time.monotonic()
    proc.stop(grace=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5
    assert proc.popen.returncode == -signal.SIGKILL
    assert _gone(proc.pid)
    assert not proc.running()


def test_process_kill_is_immediate(procs: ProcessSet) -> None:
    proc = procs.start("stubborn", [sys.executable, "-c", STUBBORN])
    _wait_for(lambda: "ready" in proc.log.read_text(), 20, "the handler to be installed")
    started = time.monotonic()
    proc.kill()
    assert time.monotonic() - started < 2
    assert proc.popen.returncode == -signal.SIGKILL


def test_process_logs_env_and_tail(procs: ProcessSet, tmp_path: Path) -> None:
    code = "import os\nfor i in range(50): print('line', i)\nprint('env', os.environ['FOO'])"
    proc = procs.start("printer", [sys.executable, "-c", code], env={"FOO": "bar"})
    proc.popen.wait(timeout=20)
    assert proc.log == tmp_path / "logs" / "printer.log"
    assert proc.tail(3).splitlines() == ["line 48", "line 49", "env bar"]
    assert proc.tail().splitlines()[0] == "line 21"  # the last 30 of 51 lines
    assert not proc.running()
    # A restart under the same name appends to the same log.
    again = procs.start("printer", [sys.executable, "-c", "print('again')"])
    again.popen.wait(timeout=20)
    procs.stop_all()
    text = (tmp_path / "logs" / "printer.log").read_text()
    assert text.startswith("line 0") and text.endswith("again\n")


def test_tail_of_a_missing_log(tmp_path: Path) -> None:
    popen = subprocess.Popen([sys.executable, "-c", "pass"])
    popen.wait(timeout=20)
    assert ManagedProcess("x", popen, tmp_path / "nope.log").tail() == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_handle_termination_raises_system_exit(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(SystemExit) as exc:
        with handle_termination():
            assert signal.getsignal(sig) is not before
            os.kill(os.getpid(), sig)
            time.sleep(5)  # interrupted by the handler
            pytest.fail("the signal did not raise")
    assert exc.value.code == 128 + sig
    assert signal.getsignal(sig) is before


def test_handle_termination_restores_handlers_on_normal_exit() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    with handle_termination():
        pass
    assert {s: signal.getsignal(s) for s in before} == before


# ----------------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_deploy_help_lists_the_options() -> None:
    result = runner.invoke(cli_app, ["deploy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in (
        "--nodes",
        "--byzantine",
        "--attack",
        "--method",
        "--aggregator",
        "--rounds",
        "--dataset",
        "--out",
        "--insecure",
        "--round-timeout",
        "--checkpoint",
        "--resume",
        "--workdir",
        "--app",
    ):
        assert option in result.output, option


def test_deploy_cli_bad_aggregator(tmp_path: Path, no_deployment: None) -> None:
    args = ["deploy", "--insecure", "--aggregator", "no-such-rule", "--dataset", "digits"]
    args += ["--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "work")]
    before = signal.getsignal(signal.SIGTERM)
    result = runner.invoke(cli_app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "--insecure" in result.output and "no TLS" in result.output
    assert "error" in result.output and "no-such-rule" in result.output
    assert not (tmp_path / "work").exists()
    assert signal.getsignal(signal.SIGTERM) is before


def test_deploy_cli_refuses_an_omniscient_attack(tmp_path: Path, no_deployment: None) -> None:
    args = ["deploy", "--attack", "alie", "--byzantine", "1", "--nodes", "3"]
    args += ["--dataset", "digits", "--out", str(tmp_path / "r.json")]
    result = runner.invoke(cli_app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "omniscient" in result.output
    assert "warning" not in result.output  # TLS is the default
