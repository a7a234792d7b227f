"""The dev cluster's certificates: one CA, serving and client certificates, SA keys.

A real control plane authenticates every component with X.509 client certificates and
authorises it by name (RBAC, the Node authorizer), so the dev cluster needs the same set
of certificates kubeadm would generate. They are made here with ``cryptography`` (EC P-256
keys; RSA-2048 for the ServiceAccount token signing key), written with mode 0600, and
regenerated for every fresh cluster.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kumulus.devcluster.paths import NODE_NAME

#: Certificates live long enough for any dev session; clocks may be a little off.
VALIDITY = datetime.timedelta(days=365)
BACKDATE = datetime.timedelta(hours=1)

#: The API server's names; :func:`generate` adds the addresses of the cluster's slot (the host
#: end of the node's veth, where it listens, and the ``kubernetes`` Service's ClusterIP).
APISERVER_SANS = (
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
LOOPBACK_SANS = ("127.0.0.1", "localhost")
#: Loopback-only serving certificates: (file stem, common name); the kubelet's gets the node's
#: address too.
SERVING = (
    ("controller-manager-serving", "kube-controller-manager"),
    ("scheduler-serving", "kube-scheduler"),
)


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate to issue: file stem, common name and organisations."""

    stem: str
    common_name: str
    organisations: tuple[str, ...] = ()


#: The cluster DNS's identity (the launcher grants it read access to Services and endpoints).
COREDNS_USER = "system:kumulus-dev:coredns"

#: The common name the apiserver accepts for aggregated-API proxy requests.
FRONT_PROXY_CLIENT = "front-proxy-client"

#: Every client identity of the dev cluster.
CLIENTS = (
    ClientIdentity("admin", "kubernetes-admin", ("system:masters",)),
    ClientIdentity(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
    ),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("node", f"system:node:{NODE_NAME}", ("system:nodes",)),
    # Bound to system:node-proxier by the API server's default RBAC.
    ClientIdentity("kube-proxy", "system:kube-proxy"),
    # Bound by the launcher to a ClusterRole that lists and watches what DNS answers from.
    ClientIdentity("coredns", COREDNS_USER),
)


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by the owner (keys, certs, kubeconfigs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organisations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organisations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _sans(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster CA: signs every other certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls, common_name: str = "kumulus-dev-ca") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY * 10)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def issue(
        self,
        common_name: str,
        organisations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
        client: bool = True,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """Issue a leaf certificate; with ``server_names`` it is also a serving cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organisations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if server_names:
            builder = builder.add_extension(_sans(server_names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


@dataclass(frozen=True)
class PkiFiles:
    """Paths of the generated files (all inside one ``pki`` directory)."""

    root: Path

    def cert(self, stem: str) -> Path:
        return self.root / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.root / f"{stem}.key"

    @property
    def ca_cert(self) -> Path:
        return self.cert("ca")

    @property
    def ca_key(self) -> Path:
        return self.key("ca")

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"


def generate(pki_dir: Path, *, apiserver_ips: Sequence[str], node_ip: str) -> PkiFiles:
    """Generate the full set of certificates and keys into ``pki_dir``.

    ``apiserver_ips`` are the addresses clients reach the API server at besides loopback;
    ``node_ip`` is the kubelet's, which the API server checks when it fetches logs.
    """
    files = PkiFiles(pki_dir)
    ca = CertificateAuthority.generate()
    write_private(files.ca_cert, _cert_pem(ca.cert))
    write_private(files.ca_key, _key_pem(ca.key))

    key, cert = ca.issue(
        "kube-apiserver", server_names=(*APISERVER_SANS, *apiserver_ips), client=False
    )
    write_private(files.cert("apiserver"), _cert_pem(cert))
    write_private(files.key("apiserver"), _key_pem(key))

    serving: list[tuple[str, str, tuple[str, ...]]] = [
        (stem, cn, LOOPBACK_SANS) for stem, cn in SERVING
    ]
    serving.append(("kubelet", NODE_NAME, (*LOOPBACK_SANS, node_ip)))
    for stem, common_name, names in serving:
        key, cert = ca.issue(common_name, server_names=names, client=False)
        write_private(files.cert(stem), _cert_pem(cert))
        write_private(files.key(stem), _key_pem(key))

    for ident in CLIENTS:
        key, cert = ca.issue(ident.common_name, ident.organisations)
        write_private(files.cert(ident.stem), _cert_pem(cert))
        write_private(files.key(ident.stem), _key_pem(key))

    # The front proxy (aggregation layer) gets its own CA, as in kubeadm; without it
    # the controller-manager and scheduler keep logging a missing requestheader CA.
    proxy_ca = CertificateAuthority.generate("kumulus-dev-front-proxy-ca")
    write_private(files.cert("front-proxy-ca"), _cert_pem(proxy_ca.cert))
    write_private(files.key("front-proxy-ca"), _key_pem(proxy_ca.key))
    key, cert = proxy_ca.issue(FRONT_PROXY_CLIENT)
    write_private(files.cert("front-proxy-client"), _cert_pem(cert))
    write_private(files.key("front-proxy-client"), _key_pem(key))

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(files.sa_key, _key_pem(sa))
    write_private(
        files.sa_pub,
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return files


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, *, server: str, files: PkiFiles, stem: str, user: str, cluster: str = "kumulus-dev"
) -> None:
    """Write a self-contained kubeconfig authenticating with the client cert ``stem``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": _b64(files.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(files.cert(stem)),
                    "client-key-data": _b64(files.key(stem)),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
        "preferences": {},
    }
    write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
