"""A throwaway certificate authority and a server certificate for 127.0.0.1/localhost, as PEM files.

The SASL_SSL broker (and a TLS PostgreSQL) of the tests present the server certificate; clients trust the CA
file, so hostname verification stays on exactly as in production. A second, unrelated CA is what an
"untrusted CA" test hands a client.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALID_FOR = datetime.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class ServerTls:
    ca_file: Path  # the CA certificate clients trust
    cert_file: Path  # the server certificate (issued by the CA), PEM
    key_file: Path  # its private key, unencrypted PKCS#8 PEM
    chain_and_key_file: Path  # key then certificate chain in one PEM file (Kafka's PEM keystore)


def make_server_tls(directory: Path, common_name: str = "testbed") -> ServerTls:
    """Write a new CA and a server certificate valid for 127.0.0.1, ::1 and localhost into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(_name(f"{common_name} CA"), ca_key, _name(f"{common_name} CA"), ca_key, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(_name(common_name), server_key, ca_cert.subject, ca_key, is_ca=False)

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    cert_pem = server_cert.public_bytes(serialization.Encoding.PEM)
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tls = ServerTls(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        chain_and_key_file=directory / "server-keystore.pem",
    )
    tls.ca_file.write_bytes(ca_pem)
    tls.cert_file.write_bytes(cert_pem)
    tls.key_file.write_bytes(key_pem)
    tls.key_file.chmod(0o600)  # PostgreSQL refuses a key others can read
    tls.chain_and_key_file.write_bytes(key_pem + cert_pem + ca_pem)
    return tls


def make_ca_file(path: Path, common_name: str = "unrelated CA") -> Path:
    """A CA certificate that signed nothing we serve: trusting only it must fail verification."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(_name(common_name), key, _name(common_name), key, is_ca=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())
