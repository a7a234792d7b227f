"""The committed CRDs, chart templates and reference pages are what the models generate."""

from __future__ import annotations

import pytest

from kumulus.api.crdgen import check, default_root, generate

pytestmark = pytest.mark.unit


def test_generated_files_are_up_to_date() -> None:
    problems = check(default_root(), generate())
    assert problems == [], (
        "Generated files are stale; run `python -m kumulus.api.crdgen` and commit the result:\n"
        + "\n".join(problems)
    )
