"""The connector registry (built-ins and ``kumulus.connectors`` entry points) and input helpers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest

from kumulus.connectors import base
from kumulus.connectors.base import CallContext, Connector, ConnectorError

pytestmark = pytest.mark.unit


class EchoConnector(Connector):
    """A plugin as a third party would write it."""

    type: ClassVar[str] = "ECHO"
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password"})

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> list[str]:
        return [] if partial or "say" in values else ["input 'say' is required"]

    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        return {"said": inputs["say"], "timeout": ctx.timeout}


class NotAConnector:
    type = "BROKEN"


class WrongType(EchoConnector):
    type: ClassVar[str] = "OTHER"


def fake_entry_points(*eps: EntryPoint) -> Any:
    def lookup(*, group: str) -> list[EntryPoint]:
        assert group == base.ENTRY_POINT_GROUP
        return list(eps)

    return lookup


def ep(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name, f"{__name__}:{attr}", base.ENTRY_POINT_GROUP)


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    base.clear_registry()
    yield
    base.clear_registry()


def test_builtins_load_lazily_once() -> None:
    rest = base.get_connector("REST")
    assert rest.type == "REST"
    assert base.get_connector("REST") is rest
    assert base.get_connector("SMTP").type == "SMTP"
    assert {"REST", "SMTP", "SQLPG", "SSH"} <= set(base.known_types())
    assert [c.type for c in base.loaded_connectors()] == ["REST", "SMTP"]


def test_unknown_type_names_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "entry_points", fake_entry_points())
    with pytest.raises(base.UnknownConnectorTypeError, match=r"unknown connector type 'FTP'.*REST"):
        base.get_connector("FTP")


async def test_plugin_from_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "entry_points", fake_entry_points(ep("ECHO", "EchoConnector")))
    assert "ECHO" in base.known_types()
    echo = base.get_connector("ECHO")
    assert isinstance(echo, EchoConnector)
    assert echo.validate({}) == ["input 'say' is required"]
    ctx = CallContext(namespace="ns", execution="e", connection=None, timeout=3.0)
    assert await echo.run({"say": "hi"}, ctx) == {"said": "hi", "timeout": 3.0}


def test_plugin_cannot_replace_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "entry_points", fake_entry_points(ep("REST", "EchoConnector")))
    assert type(base.get_connector("REST")).__name__ == "RestConnector"


@pytest.mark.parametrize(
    ("name", "attr", "match"),
    [
        ("BROKEN", "NotAConnector", "not a kumulus Connector subclass"),
        ("OTHER2", "WrongType", "declares type 'OTHER'"),
        ("MISSING", "DoesNotExist", "could not be loaded: AttributeError"),
    ],
)
def test_bad_plugins_are_unavailable(
    monkeypatch: pytest.MonkeyPatch, name: str, attr: str, match: str
) -> None:
    monkeypatch.setattr(base, "entry_points", fake_entry_points(ep(name, attr)))
    with pytest.raises(base.ConnectorUnavailableError, match=match):
        base.get_connector(name)


def test_invalid_plugin_names_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "entry_points", fake_entry_points(ep("echo", "EchoConnector")))
    assert "echo" not in base.known_types()


def test_input_helpers() -> None:
    inputs = {"s": "x", "n": "42", "f": "1.5", "b": "yes", "l": "a@x, b@y", "bad": {"a": 1}}
    assert base.input_str(inputs, "s") == "x"
    assert base.input_str(inputs, "n") == "42"
    assert base.input_str(inputs, "missing", None) is None
    assert base.input_int(inputs, "n", minimum=1) == 42
    assert base.input_float(inputs, "f", positive=True) == 1.5
    assert base.input_bool(inputs, "b", False) is True
    assert base.input_bool(inputs, "missing", True) is True
    assert base.input_str_list(inputs, "l") == ["a@x", "b@y"]
    for call, message in [
        (lambda: base.input_str(inputs, "missing"), "input 'missing' is required"),
        (lambda: base.input_str(inputs, "bad"), "must be a string"),
        (lambda: base.input_int(inputs, "s"), "must be an integer"),
        (lambda: base.input_int(inputs, "n", maximum=10), "at most 10"),
        (lambda: base.input_bool(inputs, "s", False), "true or false"),
        (lambda: base.input_float({"f": "nan"}, "f"), "finite"),
    ]:
        with pytest.raises(ConnectorError, match=message) as err:
            call()
        assert err.value.reason == "InvalidInputs"
