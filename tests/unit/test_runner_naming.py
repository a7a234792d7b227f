"""Deterministic child names and label values."""

from __future__ import annotations

import pytest

from kumulus.runner.naming import MAX_NAME, child_name, label_value

pytestmark = pytest.mark.unit


def test_short_names_are_plain() -> None:
    assert child_name("hello", 1, 3) == "hello-1-3"
    assert label_value("hello") == "hello"


def test_long_names_are_shortened_deterministically() -> None:
    parent = "a" * 60
    name = child_name(parent, 2, 12)
    assert len(name) <= MAX_NAME
    assert name.endswith("-2-12")
    assert name == child_name(parent, 2, 12)
    assert child_name(parent, 2, 13) != name


def test_long_parents_with_same_prefix_do_not_collide() -> None:
    a = "x" * 70 + "-one"
    b = "x" * 70 + "-two"
    assert child_name(a, 1, 1) != child_name(b, 1, 1)
    assert label_value(a) != label_value(b)
    assert len(label_value(a)) <= MAX_NAME


def test_shortened_names_never_end_the_prefix_with_a_dash() -> None:
    parent = "a" * 45 + "-" * 10 + "b" * 20
    name = child_name(parent, 1, 1)
    prefix, digest, attempt, seq = name.rsplit("-", 3)
    assert prefix[-1].isalnum()
    assert len(digest) == 8
    assert (attempt, seq) == ("1", "1")
