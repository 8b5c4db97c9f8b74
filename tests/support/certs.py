"""Certificates for TLS tests: a CA, leaf certificates signed by it, and a rogue CA.

Every leaf is good for both server and client authentication and names
``localhost`` and ``127.0.0.1``, so one can serve a port and dial out alike.
Keys are EC P-256 (fast to make); files are PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shards._grpc.credentials import ServerTls, TlsConfig


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    controller: Pair  # CN shards-controller: the controller's port, and its client cert to workers
    worker: Pair  # CN shards-worker: the worker's port, and its client cert to the controller
    client: Pair  # CN client-alice
    rogue_ca: Path
    rogue: Pair  # CN shards-controller, but signed by the rogue CA

    def server(self, pair: Pair, mutual: bool = False) -> ServerTls:
        return ServerTls(pair.cert, pair.key, self.ca if mutual else b"")

    def dial(self, pair: Pair | None = None, ca: Path | None = None) -> TlsConfig:
        if pair is None:
            return TlsConfig(ca or self.ca)
        return TlsConfig(ca or self.ca, pair.cert, pair.key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    _write_cert(cert, path)
    return key, cert, path


def _leaf(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, file: str
) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(name),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pair = Pair(directory / f"{file}.pem", directory / f"{file}-key.pem")
    _write_cert(cert, pair.cert)
    _write_key(key, pair.key)
    return pair


def make_certs(directory: Path) -> Certs:
    """A fresh CA and leaves in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca_path = _ca(directory, "test-ca")
    rogue_key, rogue_cert, rogue_path = _ca(directory, "rogue-ca")
    return Certs(
        ca=ca_path,
        controller=_leaf(directory, ca_key, ca_cert, "shards-controller", "controller"),
        worker=_leaf(directory, ca_key, ca_cert, "shards-worker", "worker"),
        client=_leaf(directory, ca_key, ca_cert, "client-alice", "client"),
        rogue_ca=rogue_path,
        rogue=_leaf(directory, rogue_key, rogue_cert, "shards-controller", "rogue"),
    )
