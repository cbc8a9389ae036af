"""Certificates for mutual TLS between the Dask scheduler, workers and clients.

One private CA per cluster signs one certificate per role; every Dask process (scheduler,
worker, nanny, the API service, a CLI user) presents its role's certificate and accepts only
peers whose certificate the same CA signed. ``distributed`` does not check hostnames, so a
certificate authenticates "a member of this cluster", not a host.

Files written by :func:`write_bundle` (what ``ntk certs --out DIR`` makes)::

    DIR/ca.pem  DIR/ca-key.pem  DIR/<role>.pem  DIR/<role>-key.pem   (keys 0600, DIR 0700)

:func:`k8s_secrets` renders the same bundle as ``v1/Secret`` objects ``ntk-tls-<role>`` with
keys ``ca.pem``, ``tls.crt`` and ``tls.key`` (the CA key is never in a Secret).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ntkcompute.errors import InputError

#: The roles ``ntk certs`` issues by default; "client" is the API service and CLI users.
ROLES = ("scheduler", "worker", "client")
DEFAULT_DAYS = 825
_ROLE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")  # a file name and a DNS label
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SKEW = datetime.timedelta(minutes=5)  # valid from a little before now: clocks drift


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ntkcompute"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(days: int = DEFAULT_DAYS, name: str = "ntkcompute cluster CA"
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (EC P-256, SHA-256) that may sign leaf certificates only."""
    if days < 1:
        raise InputError("must be at least 1", field="days")
    key, now = _key(), _now()
    subject = _name(f"{name} {x509.random_serial_number() % 16**8:08x}")
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, role: str,
          days: int = DEFAULT_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for ``role`` signed by the CA, for both TLS server and client use
    (every Dask process listens and connects)."""
    _check_role(role)
    if days < 1:
        raise InputError("must be at least 1", field="days")
    key, now = _key(), _now()
    end = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    san = x509.SubjectAlternativeName([x509.DNSName(role), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder()
            .subject_name(_name(role)).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """Unencrypted PKCS#8 PEM (Dask processes load it without a passphrase)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def parse_roles(text: str | Sequence[str]) -> list[str]:
    """``"scheduler,worker"`` -> ``["scheduler", "worker"]``, checked and deduplicated."""
    roles = [r.strip() for r in (text.split(",") if isinstance(text, str) else text)]
    roles = list(dict.fromkeys(r for r in roles if r))
    if not roles:
        raise InputError("no roles given", field="roles")
    for r in roles:
        _check_role(r)
    return roles


def _check_role(role: str) -> None:
    if not _ROLE.match(role) or role == "ca":
        raise InputError(f"bad role name {role!r}: lowercase letters, digits and '-', not "
                         "'ca'", field="roles")


def check_namespace(namespace: str | None) -> None:
    """An InputError unless ``namespace`` is None or a Kubernetes namespace name."""
    if namespace is not None and not _NAMESPACE.match(namespace):
        raise InputError(f"bad namespace {namespace!r}", field="namespace")


def bundle_paths(out: Path, roles: Sequence[str]) -> dict[str, Path]:
    """What :func:`write_bundle` writes: ``"ca"``, ``"ca-key"``, ``role``, ``role-key``."""
    names = ["ca", "ca-key"] + [n for r in roles for n in (r, f"{r}-key")]
    return {n: out / f"{n}.pem" for n in names}


def _write(path: Path, text: str, private: bool) -> None:
    # a key is created 0600 and never exists with a wider mode, even for an instant
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_bundle(out: str | Path, roles: Sequence[str] = ROLES, days: int = DEFAULT_DAYS,
                 force: bool = False) -> dict[str, Path]:
    """Make a new CA and one certificate per role under ``out``; returns the paths written.

    ``out`` is created 0700 if missing. Existing files are never overwritten unless
    ``force`` (an :class:`InputError` on field "out" names them).
    """
    out = Path(out)
    roles = parse_roles(roles)
    paths = bundle_paths(out, roles)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise InputError(f"refusing to overwrite {', '.join(existing)} (pass --force)",
                         field="out")
    if not out.exists():
        out.mkdir(parents=True, mode=0o700)
        out.chmod(0o700)  # mkdir's mode is masked by the umask
    elif not out.is_dir():
        raise InputError(f"{out} is not a directory", field="out")
    ca, ca_key = make_ca(days)
    _write(paths["ca"], cert_pem(ca), private=False)
    _write(paths["ca-key"], key_pem(ca_key), private=True)
    for r in roles:
        cert, key = issue(ca, ca_key, r, days)
        _write(paths[r], cert_pem(cert), private=False)
        _write(paths[f"{r}-key"], key_pem(key), private=True)
    return paths


def _block(text: str, indent: str) -> str:
    return "|\n" + "".join(f"{indent}{line}\n" for line in text.strip("\n").split("\n"))


def k8s_secrets(out: str | Path, roles: Sequence[str] = ROLES,
                namespace: str | None = None) -> str:
    """A YAML stream of one Opaque ``v1/Secret`` ``ntk-tls-<role>`` per role, from the files
    of a bundle under ``out``: keys ``ca.pem``, ``tls.crt``, ``tls.key``."""
    check_namespace(namespace)
    out = Path(out)
    roles = parse_roles(roles)
    paths = bundle_paths(out, roles)
    ca = paths["ca"].read_text()
    docs = []
    for r in roles:
        meta = f"  name: ntk-tls-{r}\n"
        if namespace:
            meta += f"  namespace: {namespace}\n"
        docs.append(
            "apiVersion: v1\nkind: Secret\nmetadata:\n" + meta
            + "  labels:\n    app.kubernetes.io/part-of: ntkcompute\n"
            + f"    ntkcompute/tls-role: {r}\n"
            + "type: Opaque\nstringData:\n"
            + "  ca.pem: " + _block(ca, "    ")
            + "  tls.crt: " + _block(paths[r].read_text(), "    ")
            + "  tls.key: " + _block(paths[f"{r}-key"].read_text(), "    "))
    return "---\n" + "---\n".join(docs)


def write_k8s_secrets(path: str | Path, out: str | Path, roles: Sequence[str] = ROLES,
                      namespace: str | None = None, force: bool = False) -> Path:
    """Write :func:`k8s_secrets` to ``path`` (0600: it holds private keys)."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"refusing to overwrite {path} (pass --force)", field="k8s_secrets")
    _write(path, k8s_secrets(out, roles, namespace), private=True)
    return path
