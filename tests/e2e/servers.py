"""Real third-party servers for the connector tests, started by the test session on this machine.

The SQLPG and SSH connectors are tested against the real thing, not mocks: a PostgreSQL
cluster (``initdb`` + ``pg_ctl`` from the Debian package, found under
``/usr/lib/postgresql/*/bin``) and an OpenSSH server (``sshd -D`` with a generated
configuration). Both live in a temporary folder, listen on a free port of the address the dev
cluster's Pods reach this machine at (``cluster_host()``: the host end of the node's veth,
which the operator on this machine reaches as well) and are stopped at the end of the session.
``devcluster/install-test-deps.sh`` (run by ``make test``) installs the packages; a missing
binary fails the fixture with a pointer to that script.

PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` system user the
package creates. sshd runs as root (it must, to switch users) with a configuration used only
here: root login by key (``PermitRootLogin yes``), password authentication on (so a wrong
password is rejected by the server for real), no PAM, no other listener.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.local_servers import cluster_host, free_port

from kumulus.devcluster.network import ALL_PODS

INSTALL_HINT = "run devcluster/install-test-deps.sh (make test does)"
#: Where the servers listen: the address of this machine the dev cluster's Pods reach.
HOST = cluster_host()


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Block until something accepts TCP connections on ``port`` (the server started)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not listen on {HOST}:{port}:\n{log.read_text(errors='replace')}")


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL cluster: connect with these values (password auth over TCP)."""

    host: str
    port: int
    user: str
    password: str
    database: str
    socket_dir: Path

    def values(self) -> dict[str, Any]:
        """Non-secret SQLPG values of a Connection to this server (the password is apart)."""
        return {"host": self.host, "port": self.port, "user": self.user, "database": self.database}


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (newest major version installed)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major_version)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    pytest.fail(f"PostgreSQL's {name} is missing: {INSTALL_HINT}")


def _major_version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def _run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a command as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster on HOST:<free port> for this test session."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    # Not under pytest's basetemp: that is private to root (0700) and postgres runs as
    # its own user.
    base = Path(tempfile.mkdtemp(prefix="kumulus-test-pg-"))
    try:
        yield from _postgres(base, initdb, pg_ctl)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _postgres(base: Path, initdb: str, pg_ctl: str) -> Iterator[PostgresServer]:
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    pwfile = base / "pwfile"
    user, password = "kumulus", secrets.token_urlsafe(18)
    sockets.mkdir()
    pwfile.write_text(password + "\n")
    run_as = None
    if os.geteuid() == 0:  # postgres refuses to run as root: use the package's system user
        run_as = "postgres"
        entry = pwd.getpwnam(run_as)
        for path in (base, sockets, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    as_user = _run_as(run_as)
    init = subprocess.run(
        [
            initdb,
            "-D",
            str(data),
            "-U",
            user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=base,
        **as_user,
    )
    pwfile.unlink()
    if init.returncode != 0:
        pytest.fail(f"initdb failed ({init.returncode}): {init.stderr}")
    # Clients connect over TCP from this machine (HOST) and from the dev cluster's Pods.
    with (data / "pg_hba.conf").open("a") as hba:
        for source in (f"{HOST}/32", str(ALL_PODS)):
            hba.write(f"host all all {source} scram-sha-256\n")
    port = free_port(HOST)
    options = (
        f"-c listen_addresses={HOST} -c port={port} -c unix_socket_directories={sockets} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )
    start = subprocess.run(
        [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
        cwd=base,
        check=False,
        **as_user,
    )
    if start.returncode != 0:
        server_log = log.read_text(errors="replace") if log.exists() else ""
        pytest.fail(f"pg_ctl start failed: {start.stderr}\n{server_log}")
    try:
        yield PostgresServer(HOST, port, user, password, "postgres", sockets)
    finally:
        subprocess.run(
            [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            cwd=base,
            check=False,
            **as_user,
        )


# --------------------------------------------------------------------------- OpenSSH


@dataclass(frozen=True)
class SshServer:
    """A running sshd: log in as ``username`` with ``key``; ``hostkey`` is its public key."""

    host: str
    port: int
    username: str
    key: str
    """The client's private key (OpenSSH format) authorised for ``username``."""
    hostkey: str
    """The server's public host key (``ssh-ed25519 AAAA...``): what a Connection pins."""
    other_hostkey: str
    """A public key that is NOT the server's (for the unknown-host-key test)."""

    def values(self) -> dict[str, Any]:
        """Non-secret SSH values of a Connection to this server (the key is apart)."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "hostkey": self.hostkey,
        }


def _keypair() -> tuple[str, str]:
    """A new ed25519 key pair: (private key in OpenSSH format, public key line)."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    private = key.export_private_key().decode()
    public = key.export_public_key().decode().strip()
    return private, public


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An OpenSSH server on HOST:<free port> for this test session."""
    sshd = "/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else shutil.which("sshd")
    if not sshd:
        pytest.fail(f"OpenSSH's sshd is missing: {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.fail("the SSH tests run sshd as root (it switches users); run them as root")
    base = tmp_path_factory.mktemp("sshd")
    os.chmod(base, 0o700)
    host_private, host_public = _keypair()
    client_private, client_public = _keypair()
    _, other_public = _keypair()
    host_key = base / "ssh_host_ed25519_key"
    host_key.write_text(host_private)
    os.chmod(host_key, 0o600)
    authorized = base / "authorized_keys"
    authorized.write_text(client_public + "\n")
    os.chmod(authorized, 0o600)
    port = free_port(HOST)
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {HOST}",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin yes",
                "PubkeyAuthentication yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "MaxStartups 50",
                "LogLevel INFO",
                "",
            ]
        )
    )
    # sshd needs its privilege separation directory (the package service would create it).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = base / "sshd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(port, proc, "sshd", log)
        yield SshServer(
            HOST,
            port,
            pwd.getpwuid(os.geteuid()).pw_name,
            client_private,
            host_public,
            other_public,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
