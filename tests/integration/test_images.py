"""The dev node's images end to end: built by ``make images``, imported into a real containerd.

The fixture brings the image cache up to date (``kumulus.devcluster.images.ensure_images``; a
cold build takes a few minutes, a warm one about a second) and starts a throwaway containerd
with its own root, state and socket in a temporary folder. The CRI plugin is disabled: these
tests need only images, snapshots and runc, and no network (``ctr run`` gives each container an
empty network namespace). They check what the kubelet relies on: every image is listed under
its full name after the import (the pause image too, which containerd must never pull), the
Python images run as 10001:10001 and their entry points import, and the pause process exits 0
on SIGTERM and reaps orphans as a namespace's PID 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kumulus.devcluster import images
from kumulus.devcluster.paths import REPO_ROOT

# A cold `make images` (Debian base, pip installs) can take longer than the default 300 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


class Containerd:
    """A containerd of its own, started for this module and stopped after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "containerd.sock"
        config = root / "config.toml"
        config.write_text(
            f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{root / "containerd.sock.ttrpc"}"

[debug]
  address = "{root / "debug.sock"}"
"""
        )
        self.log = (root / "containerd.log").open("w")
        self.proc = subprocess.Popen(
            ["containerd", f"--config={config}"], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start:\n{(root / 'containerd.log').read_text()}")
            time.sleep(0.1)

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.socket), "--namespace", images.CRI_NAMESPACE, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def stop(self) -> None:
        # Tasks a failed test left behind would keep their shims and mounts.
        for line in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", line, check=False)
            self.ctr("tasks", "delete", "--force", line, check=False)
        for line in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", line, check=False)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def archives() -> list[images.ImageArchive]:
    return images.ensure_images()


@pytest.fixture(scope="module")
def containerd(archives: list[images.ImageArchive]) -> Iterator[Containerd]:
    # A short path: the socket's must stay under the 108 bytes of sun_path.
    root = Path(tempfile.mkdtemp(prefix="kumulus-ctrd-", dir="/tmp"))
    daemon = Containerd(root)
    try:
        images.import_images(str(daemon.socket), archives)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def run(daemon: Containerd, image: str, *command: str) -> str:
    """Run ``command`` in a new container of ``image`` and return its output (``ctr run --rm``)."""
    return daemon.ctr("run", "--rm", image, f"t-{uuid.uuid4().hex[:8]}", *command).stdout


def test_archives_are_in_the_cache_under_their_names(
    archives: list[images.ImageArchive],
) -> None:
    assert [a.image for a in archives] == list(images.IMAGES)
    cache = images.image_cache_dir()
    for archive in archives:
        name = archive.image.rsplit(":", 1)[0].rsplit("/", 1)[1]
        version = images.package_version()
        assert archive.path == cache / f"{name}-{version}-{archive.inputs}.tar"
        assert archive.path.stat().st_size > 0


def test_imported_images_keep_their_tags(
    containerd: Containerd, archives: list[images.ImageArchive]
) -> None:
    listed = images.image_labels(str(containerd.socket))
    for archive in archives:
        assert archive.image in listed, sorted(listed)
        assert listed[archive.image][images.INPUTS_LABEL] == archive.inputs
    # Nothing was pulled or renamed: only our three names (no import-<date> or digest names).
    assert sorted(listed) == sorted(images.IMAGES)


def test_importing_again_is_skipped(
    containerd: Containerd, archives: list[images.ImageArchive]
) -> None:
    start = time.monotonic()
    images.import_images(str(containerd.socket), archives)
    assert time.monotonic() - start < 5
    assert set(images.IMAGES) <= set(images.image_labels(str(containerd.socket)))


@pytest.mark.parametrize("image", [images.RUNNER_IMAGE, images.OPERATOR_IMAGE])
def test_python_images_run_as_10001_with_its_own_group(containerd: Containerd, image: str) -> None:
    assert run(containerd, image, "id").split() == [
        "uid=10001(kumulus)",
        "gid=10001(kumulus)",
        "groups=10001(kumulus)",
    ]


def test_runner_image_has_the_runner_and_the_flow_api(containerd: Containerd) -> None:
    out = run(
        containerd,
        images.RUNNER_IMAGE,
        "python3",
        "-c",
        "import flow_api, kumulus.runner, shutil; print(shutil.which('kumulus-runner'))",
    )
    assert out.strip() == "/opt/kumulus/bin/kumulus-runner"


def test_operator_image_has_kopf_the_handlers_and_the_webhook(containerd: Containerd) -> None:
    assert run(containerd, images.OPERATOR_IMAGE, "kopf", "--version").startswith("kopf, version")
    out = run(
        containerd,
        images.OPERATOR_IMAGE,
        "python3",
        "-c",
        "import kumulus.handlers, kumulus.webhook.main, kumulus.connectors.sqlpg; print('ok')",
    )
    assert out.strip() == "ok"


def test_pause_exits_zero_on_sigterm(containerd: Containerd) -> None:
    name = f"t-pause-{uuid.uuid4().hex[:8]}"
    argv = ["ctr", "--address", str(containerd.socket), "--namespace", images.CRI_NAMESPACE]
    proc = subprocess.Popen([*argv, "run", "--rm", images.PAUSE_IMAGE, name])
    try:
        deadline = time.monotonic() + 30
        while "RUNNING" not in containerd.ctr("tasks", "list", check=False).stdout:
            assert proc.poll() is None, "the pause container ended by itself"
            assert time.monotonic() < deadline, "the pause container did not start"
            time.sleep(0.1)
        containerd.ctr("tasks", "kill", "--signal", "SIGTERM", name)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> dict[int, str]:
    """The children of ``pid`` and their states (/proc/<child>/stat)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found[int(entry.name)] = fields[0]
    return found


def test_pause_reaps_orphans_as_pid_1(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(binary), str(REPO_ROOT / "images/pause/pause.c")],
        check=True,
    )
    unshare = subprocess.Popen(["unshare", "--pid", "--fork", str(binary)])
    try:
        deadline = time.monotonic() + 10
        while not (kids := _children(unshare.pid)):
            assert time.monotonic() < deadline, "pause did not start"
            time.sleep(0.05)
        (pause,) = kids
        # A shell in pause's PID namespace starts a short sleep and exits: the sleep is orphaned,
        # so the kernel makes pause (PID 1 there) its parent, and it must reap it.
        subprocess.run(
            ["nsenter", "--target", str(pause), "--pid", "--", "sh", "-c", "sleep 0.5 & exit 0"],
            check=True,
        )
        assert len(_children(pause)) == 1, "the orphan was not reparented to pause"
        deadline = time.monotonic() + 10
        while _children(pause):
            assert time.monotonic() < deadline, f"not reaped: {_children(pause)}"
            time.sleep(0.05)
        os.kill(pause, signal.SIGTERM)
        assert unshare.wait(timeout=10) == 0
    finally:
        if unshare.poll() is None:
            unshare.kill()
            unshare.wait()
