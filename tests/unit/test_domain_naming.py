"""Deterministic naming and backoff math."""

from __future__ import annotations

import pytest

from kumulus.domain import backoff, naming

pytestmark = pytest.mark.unit


def test_short_names_are_kept() -> None:
    assert naming.pod_name("hello", 1) == "hello-a1"
    assert naming.execution_label_value("hello") == "hello"


def test_long_names_are_shortened_deterministically_to_63() -> None:
    long = "x" * 80
    first = naming.pod_name(long, 12)
    assert first == naming.pod_name(long, 12)
    assert len(first) <= 63
    assert first.endswith("-a12")
    assert len(naming.execution_label_value(long)) <= 63


def test_distinct_long_names_stay_distinct() -> None:
    a = naming.pod_name("p" * 70 + "a", 1)
    b = naming.pod_name("p" * 70 + "b", 1)
    assert a != b


def test_name_exactly_at_limit_is_not_hashed() -> None:
    name = "n" * 60
    assert naming.pod_name(name, 1) == name + "-a1"
    assert len(naming.pod_name(name, 10)) <= 63


def test_backoff_grows_by_factor() -> None:
    assert backoff.retry_delay(1, 5, 2) == 5
    assert backoff.retry_delay(2, 5, 2) == 10
    assert backoff.retry_delay(3, 5, 2) == 20
    assert backoff.retry_delay(1, None, None) == backoff.DEFAULT_BACKOFF_SECONDS


def test_backoff_is_capped() -> None:
    assert backoff.retry_delay(200, 10, 10) == backoff.MAX_DELAY_SECONDS


def test_retries_left_counts_the_first_attempt() -> None:
    assert backoff.retries_left(1, 2)
    assert backoff.retries_left(2, 2)
    assert not backoff.retries_left(3, 2)
    assert not backoff.retries_left(1, None)
