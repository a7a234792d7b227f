"""Guards for the source layout that the packaging and the layer contracts rely on."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    # operator/__init__.py would shadow the standard library's `operator` module.
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_stdlib_operator_module_is_not_shadowed() -> None:
    import operator
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(operator.__file__).resolve().parent == stdlib


def test_import_package_lives_under_operator() -> None:
    import kumulus

    assert Path(kumulus.__file__).resolve().parent == ROOT / "operator" / "kumulus"
