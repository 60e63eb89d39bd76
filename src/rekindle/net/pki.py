"""The cloud's own certificate authority.

One installation has one CA. It signs the TLS server certificates of the cloud and of every
storage node, and a client certificate for each enrolled agent (from a CSR: the agent's
private key never leaves the agent). Agents and storage nodes pin this CA; nothing trusts
the system's public roots. Keys are ECDSA P-256: small, fast handshakes, supported by every
TLS stack we talk to.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rekindle.core.errors import UsageError

CA_DAYS = 3650
LEAF_DAYS = 825


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError("expected an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: how the cloud recognises an agent."""
    return cert.fingerprint(hashes.SHA256()).hex()


def fingerprint_der(der: bytes) -> str:
    return fingerprint(x509.load_der_x509_certificate(der))


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "Rekindle CA") -> CertificateAuthority:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        key_file, cert_file = directory / "ca.key", directory / "ca.pem"
        if key_file.exists() and cert_file.exists():
            return cls(
                load_key(key_file.read_bytes()),
                x509.load_pem_x509_certificate(cert_file.read_bytes()),
            )
        ca = cls.create()
        write_private(key_file, key_pem(ca.key))
        write_private(cert_file, cert_pem(ca.cert))
        return ca

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
        days: int = LEAF_DAYS,
    ) -> x509.Certificate:
        now = _now()
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def issue_server(self, hostnames: list[str]) -> tuple[bytes, bytes]:
        """A TLS server certificate for the cloud or a storage node: (cert PEM, key PEM)."""
        key = new_key()
        sans: list[x509.GeneralName] = []
        for h in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
        cert = self._leaf(subject, key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, sans)
        return cert_pem(cert) + self.pem, key_pem(key)

    def sign_client_csr(self, csr_pem: bytes, common_name: str) -> x509.Certificate:
        """Sign an agent's CSR. The subject is ours to choose, not the agent's: the cloud
        identifies agents by certificate fingerprint and names them itself."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise UsageError(f"malformed certificate signing request: {e}") from e
        if not csr.is_signature_valid:
            raise UsageError("certificate signing request has a bad signature")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise UsageError("certificate signing request must carry an EC P-256 key")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return self._leaf(subject, public, ExtendedKeyUsageOID.CLIENT_AUTH)


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def ensure_server_cert(ca: CertificateAuthority, directory: Path, hostnames: list[str]) -> None:
    """Give a service a certificate signed by the CA (kept across restarts)."""
    cert_file, key_file = directory / "tls.pem", directory / "tls.key"
    if cert_file.exists() and key_file.exists():
        return
    cert, key = ca.issue_server(hostnames)
    write_private(key_file, key)
    write_private(cert_file, cert)
