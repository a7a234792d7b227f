"""Settings from the environment and flow code checks."""

from __future__ import annotations

import pytest

from kumulus.domain import outputs
from kumulus.domain.flowcode import check_code
from kumulus.domain.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    s = Settings()
    assert s.output_limit_bytes == 262144
    assert s.pod_start_deadline_seconds == 120
    assert s.manage_runner_rbac is True
    assert s.namespaces == ()


def test_env_overrides_every_kind_of_field() -> None:
    s = Settings.from_env(
        {
            "KUMULUS_RUNNER_IMAGE": "img:1",
            "KUMULUS_NAMESPACES": "a, b",
            "KUMULUS_MANAGE_RUNNER_RBAC": "false",
            "KUMULUS_DEFAULT_TTL_SECONDS": "30",
            "KUMULUS_POD_START_DEADLINE_SECONDS": "7",
            "KUMULUS_REQUEUE_ERROR_SECONDS": "1.5",
        }
    )
    assert s.runner_image == "img:1"
    assert s.namespaces == ("a", "b")
    assert s.manage_runner_rbac is False
    assert s.default_ttl_seconds == 30
    assert s.pod_start_deadline_seconds == 7
    assert s.requeue_error_seconds == 1.5


@pytest.mark.parametrize("limit", [1, outputs.LIMIT_MAX_BYTES])
def test_output_limit_within_the_maximum_is_accepted(limit: int) -> None:
    env = {"KUMULUS_OUTPUT_LIMIT_BYTES": str(limit)}
    assert Settings.from_env(env).output_limit_bytes == limit


@pytest.mark.parametrize("limit", [0, -1, outputs.LIMIT_MAX_BYTES + 1, 10_000_000])
def test_output_limit_outside_the_maximum_is_rejected(limit: int) -> None:
    with pytest.raises(ValueError, match=f"between 1 and {outputs.LIMIT_MAX_BYTES} bytes"):
        Settings.from_env({"KUMULUS_OUTPUT_LIMIT_BYTES": str(limit)})
    with pytest.raises(ValueError, match="output_limit_bytes"):
        Settings(output_limit_bytes=limit)


def test_bad_boolean_is_rejected() -> None:
    with pytest.raises(ValueError, match="KUMULUS_MANAGE_RUNNER_RBAC"):
        Settings.from_env({"KUMULUS_MANAGE_RUNNER_RBAC": "maybe"})


def test_good_code_is_ready() -> None:
    result = check_code("def handler(system, this):\n    return this.success('ok')\n")
    assert result.ok
    assert result.code_hash.startswith("sha256:")


def test_syntax_error_reports_the_line() -> None:
    result = check_code("def handler(system, this):\n    x = 1\n    return (\n\nfoo bar\n")
    assert not result.ok
    assert result.reason == "SyntaxError"
    assert result.message.startswith("Line ")


def test_syntax_error_line_number_is_exact() -> None:
    result = check_code("a = 1\nb = 2\nc = = 3\n")
    assert result.message.startswith("Line 3:")


def test_missing_handler() -> None:
    result = check_code("def main(system, this):\n    pass\n", handler="handler")
    assert not result.ok
    assert result.reason == "HandlerMissing"
