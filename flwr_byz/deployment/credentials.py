"""Credentials of a deployment: a private CA and the SuperLink's TLS certificate, and the
SuperNodes' authentication key pairs (Flower's formats: PEM for TLS, OpenSSH ECDSA P-384
keys for SuperNode authentication, as ``ssh-keygen -t ecdsa -b 384`` writes them).

Generated with ``cryptography`` (a Flower dependency), so no ``openssl`` binary is needed.
The private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..files import write_bytes

__all__ = ["NodeKeys", "TlsFiles", "make_node_keys", "make_tls"]

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """The CA certificate (give it to every SuperNode and to ``flwr``) and the SuperLink's
    certificate and private key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's authentication key pair (the public key is what gets registered)."""

    private: Path
    public: Path


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Write ``data`` atomically (parents created); a private key is 0600 from its first
    byte, also where it replaces a file of another mode."""
    return write_bytes(path, data, mode=0o600 if private else None)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flwr-byz local deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_tls(directory: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A new CA (``ca.crt``) and a SuperLink certificate (``server.pem``, ``server.key``)
    for ``hosts`` (IP addresses or DNS names, all in the subjectAltName), valid 30 days.

    127.0.0.1 is always added: the SuperLink's own SuperExec connects to it over loopback
    with TLS, and the ServerApp never starts if the certificate does not name that address.
    """
    directory = Path(directory)
    if not hosts:
        raise ValueError("make_tls needs at least one host name or address")
    hosts = list(dict.fromkeys([*hosts, "127.0.0.1"]))
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("flwr-byz local CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TlsFiles(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(pem)),
        server_cert=_write(directory / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(directory / "server.key", _pem_key(server_key), private=True),
    )


def make_node_keys(directory: str | Path, name: str) -> NodeKeys:
    """A SuperNode key pair ``<name>`` (OpenSSH private key) and ``<name>.pub``."""
    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return NodeKeys(
        private=_write(directory / name, private, private=True),
        public=_write(directory / f"{name}.pub", public + f" {name}\n".encode()),
    )
