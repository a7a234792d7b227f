"""The dev node's images (``kumulus.devcluster.images``) without building or importing any.

The names must be the ones the rest of the project expects (the chart's defaults,
``Settings.runner_image``, the package version), the Dockerfiles must keep the user and group
the chart runs as, and the manifest and ``ctr images list`` must be read right. Building and
importing for real is ``tests/integration/test_images.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kumulus.devcluster import images
from kumulus.domain.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kumulus"
PYTHON_DOCKERFILES = [ROOT / "runner-image" / "Dockerfile", ROOT / "images/operator/Dockerfile"]


def test_images_are_tagged_with_the_package_version_and_the_chart_app_version() -> None:
    version = images.package_version()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert all(image.endswith(f":{version}") for image in images.IMAGES)
    assert len(set(images.IMAGES)) == 3


def test_image_names_are_the_chart_and_settings_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = images.package_version()
    names = [images.RUNNER_IMAGE, images.OPERATOR_IMAGE, images.PAUSE_IMAGE]
    assert names == [
        f"{values['runner']['image']['repository']}:{version}",
        f"{values['image']['repository']}:{version}",
        f"kumulus.dev/pause:{version}",
    ]
    assert Settings().runner_image == names[0]


@pytest.mark.parametrize("dockerfile", PYTHON_DOCKERFILES, ids=lambda p: p.parent.name)
def test_python_images_run_as_10001_with_its_own_group(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (values["runAsUser"], values["runAsGroup"]) == (10001, 10001)
    assert re.search(r"^FROM debian:bookworm-slim$", text, re.M)
    assert "groupadd --system --gid 10001 kumulus" in text
    assert "useradd --system --uid 10001 --gid 10001 " in text
    assert re.findall(r"^USER .*$", text, re.M) == ["USER 10001:10001"]


def test_pause_image_is_one_static_binary() -> None:
    text = (ROOT / "images/pause/Dockerfile").read_text()
    assert re.findall(r"^FROM .*$", text, re.M) == ["FROM scratch"]
    assert 'ENTRYPOINT ["/pause"]' in text
    assert (ROOT / "images/pause/pause.c").is_file()


def write_manifest(cache: Path, rows: list[dict[str, str]]) -> None:
    (cache / images.MANIFEST_NAME).write_text(json.dumps({"images": rows}))


def rows_for(cache: Path) -> list[dict[str, str]]:
    rows = []
    for n, image in enumerate(images.IMAGES):
        archive = cache / f"image{n}.tar"
        archive.write_bytes(b"x")
        rows.append({"key": str(n), "image": image, "archive": str(archive), "inputs": f"{n:012x}"})
    return rows


def test_read_manifest_returns_every_image_in_order(tmp_path: Path) -> None:
    rows = rows_for(tmp_path)
    write_manifest(tmp_path, list(reversed(rows)))
    archives = images.read_manifest(tmp_path)
    assert [a.image for a in archives] == list(images.IMAGES)
    assert archives[0] == images.ImageArchive(
        images.RUNNER_IMAGE, tmp_path / "image0.tar", "000000000000"
    )


def test_read_manifest_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(images.ImageError, match="make images"):
        images.read_manifest(tmp_path)
    rows = rows_for(tmp_path)
    write_manifest(tmp_path, rows[:2])
    with pytest.raises(images.ImageError, match=re.escape(images.PAUSE_IMAGE)):
        images.read_manifest(tmp_path)
    Path(rows[0]["archive"]).unlink()
    write_manifest(tmp_path, rows)
    with pytest.raises(images.ImageError, match="missing"):
        images.read_manifest(tmp_path)


def test_image_cache_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUMULUS_IMAGE_CACHE", str(tmp_path / "explicit"))
    assert images.image_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("KUMULUS_IMAGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert images.image_cache_dir() == tmp_path / "kumulus" / "images"


def test_parse_image_list_reads_names_and_labels() -> None:
    out = (
        "REF                     TYPE                                                 "
        "DIGEST  SIZE      PLATFORMS   LABELS\n"
        "kumulus.dev/pause:0.1.0 application/vnd.docker.distribution.manifest.v2+json "
        "sha256:9e77 674.2 KiB linux/amd64 kumulus.dev/image-inputs=736f1242d666\n"
        "ghcr.io/kumulus-dev/kumulus:0.1.0 application/vnd.docker.distribution.manifest.v2+json "
        "sha256:4335 212.3 MiB linux/amd64 -\n"
    )
    assert images.parse_image_list(out) == {
        "kumulus.dev/pause:0.1.0": {images.INPUTS_LABEL: "736f1242d666"},
        "ghcr.io/kumulus-dev/kumulus:0.1.0": {},
    }
    assert images.parse_image_list("REF TYPE DIGEST SIZE PLATFORMS LABELS\n") == {}
