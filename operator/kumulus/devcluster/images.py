"""The container images of the dev node: built by ``make images``, imported into its containerd.

The dev cluster's node is a real kubelet on containerd, and this machine has no registry to pull
from. ``devcluster/build-images.sh`` (``make images``) builds the runner, operator and Pod
sandbox ("pause") images with buildah into archives in a cache outside the repository, keyed by
a hash of their inputs, and lists them in ``manifest.json`` there. :func:`ensure_images` brings
that cache up to date and returns the archives; :func:`import_images` loads them into a
containerd with ``ctr``, under their full names, so the kubelet finds every image a Pod names
and never pulls one (``imagePullPolicy: IfNotPresent``), the sandbox image included.

The image names are defined once, in ``devcluster/images.env`` (shared with the build script),
and tagged with the version in ``pyproject.toml``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kumulus.devcluster.paths import DEVCLUSTER_DIR, REPO_ROOT, cache_dir, read_versions

#: The repositories of the images (KEY=repository lines).
IMAGES_FILE = DEVCLUSTER_DIR / "images.env"
#: Builds what is stale and prints the manifest's path (``make images``).
BUILD_IMAGES_SCRIPT = DEVCLUSTER_DIR / "build-images.sh"
PYPROJECT = REPO_ROOT / "pyproject.toml"
MANIFEST_NAME = "manifest.json"
#: The containerd namespace the CRI plugin (and so the kubelet) uses.
CRI_NAMESPACE = "k8s.io"
#: The containerd image label :func:`import_images` sets to the archive's inputs hash.
INPUTS_LABEL = "kumulus.dev/image-inputs"


class ImageError(RuntimeError):
    """The images could not be built, found or imported."""


def package_version(pyproject: Path = PYPROJECT) -> str:
    """The version of the ``kumulus`` distribution, which tags every image."""
    with pyproject.open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    if not isinstance(version, str):
        raise ImageError(f"{pyproject}: project.version is not a string.")
    return version


def image_cache_dir() -> Path:
    """The archive cache, the same default as build-images.sh (KUMULUS_IMAGE_CACHE overrides)."""
    return cache_dir("images", "KUMULUS_IMAGE_CACHE")


def _reference(key: str) -> str:
    return f"{_REPOSITORIES[key]}:{_VERSION}"


_REPOSITORIES: Final = read_versions(IMAGES_FILE)
_VERSION: Final = package_version()

#: The runner image (execution Pods), the default of ``Settings.runner_image``.
RUNNER_IMAGE: Final = _reference("RUNNER_IMAGE")
#: The operator / connection executor / webhook image, the chart's ``image``.
OPERATOR_IMAGE: Final = _reference("OPERATOR_IMAGE")
#: containerd's ``sandbox_image``: present once imported, so never pulled.
PAUSE_IMAGE: Final = _reference("PAUSE_IMAGE")
#: Every image ``make images`` builds, by full name.
IMAGES: Final = (RUNNER_IMAGE, OPERATOR_IMAGE, PAUSE_IMAGE)


@dataclass(frozen=True)
class ImageArchive:
    """One built image: its full name and the docker-archive holding it."""

    image: str
    path: Path
    #: The first 12 hex digits of the hash of the image's inputs (also in the file name).
    inputs: str


def read_manifest(cache: Path | None = None) -> list[ImageArchive]:
    """The current archive of every image in :data:`IMAGES`, from the cache's manifest.

    Raises :class:`ImageError` when the manifest is missing, lacks an image or names an
    archive that is not there (``make images`` fixes all three).
    """
    path = (cache or image_cache_dir()) / MANIFEST_NAME
    try:
        by_image = {
            row["image"]: ImageArchive(row["image"], Path(row["archive"]), row["inputs"])
            for row in json.loads(path.read_text())["images"]
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"No usable image manifest at {path} ({exc}); run `make images`.") from exc
    archives: list[ImageArchive] = []
    for image in IMAGES:
        archive = by_image.get(image)
        if archive is None:
            raise ImageError(f"{path} lists no archive of {image}; run `make images`.")
        if not archive.path.is_file():
            raise ImageError(
                f"The archive of {image}, {archive.path}, is missing; run `make images`."
            )
        archives.append(archive)
    return archives


def ensure_images(cache: Path | None = None) -> list[ImageArchive]:
    """Build the images whose inputs changed (a warm cache costs about a second); their archives.

    Runs ``devcluster/build-images.sh``, which keeps its build logs in ``<cache>/logs`` and
    reports progress on stderr.
    """
    env = dict(os.environ)
    if cache is not None:
        env["KUMULUS_IMAGE_CACHE"] = str(cache)
    done = subprocess.run(
        [str(BUILD_IMAGES_SCRIPT)], env=env, stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise ImageError(f"{BUILD_IMAGES_SCRIPT} failed (exit {done.returncode}); see above.")
    return read_manifest(cache)


def _ctr(address: str, namespace: str) -> list[str]:
    return ["ctr", "--address", address, "--namespace", namespace]


def _run_ctr(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageError(f"ctr could not {what}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def import_images(
    ctr_address: str,
    archives: Iterable[ImageArchive],
    *,
    namespace: str = CRI_NAMESPACE,
    snapshotter: str | None = None,
) -> None:
    """Import the archives into the containerd at ``ctr_address`` (its socket), tags and all.

    The archives are docker-archives, which name their image in full, so ``ctr images import``
    keeps the tag without ``--base-name`` and never pulls; it also unpacks each image for
    ``snapshotter`` (containerd's default when None), which must be the CRI plugin's. Each
    imported image gets the label :data:`INPUTS_LABEL` (the archive's inputs hash), and an image
    already labelled so is not imported again. Raises :class:`ImageError` if ``ctr`` fails or an
    image is not listed afterwards.
    """
    wanted = list(archives)
    base = _ctr(ctr_address, namespace)
    present = image_labels(ctr_address, namespace=namespace)
    for archive in wanted:
        if present.get(archive.image, {}).get(INPUTS_LABEL) == archive.inputs:
            continue
        argv = [*base, "images", "import"]
        if snapshotter:
            argv.append(f"--snapshotter={snapshotter}")
        _run_ctr([*argv, str(archive.path)], f"import {archive.image} from {archive.path}")
        _run_ctr(
            [*base, "images", "label", archive.image, f"{INPUTS_LABEL}={archive.inputs}"],
            f"label {archive.image}",
        )
    present = image_labels(ctr_address, namespace=namespace)
    missing = [a.image for a in wanted if a.image not in present]
    if missing:
        raise ImageError(f"Imported, but containerd does not list {', '.join(missing)}.")


def image_labels(ctr_address: str, *, namespace: str = CRI_NAMESPACE) -> dict[str, dict[str, str]]:
    """The images containerd holds in ``namespace``: name -> labels."""
    out = _run_ctr([*_ctr(ctr_address, namespace), "images", "list"], "list images")
    return parse_image_list(out)


def parse_image_list(out: str) -> dict[str, dict[str, str]]:
    """Parse ``ctr images list``: a header, then REF TYPE DIGEST SIZE PLATFORMS LABELS rows.

    LABELS, the last column, is ``-`` or ``key=value,key=value`` (no blanks in the labels that
    matter here).
    """
    found: dict[str, dict[str, str]] = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if not fields:
            continue
        labels = fields[-1] if len(fields) > 1 else "-"
        pairs = [] if labels == "-" else labels.split(",")
        found[fields[0]] = {k: v for k, _, v in (pair.partition("=") for pair in pairs)}
    return found
