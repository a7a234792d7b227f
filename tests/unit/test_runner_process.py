"""The runner and SIGTERM: the flow ends ENDED_CANCELLED with exit code 3, promptly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

SCRIPT = textwrap.dedent(
    """
    import json, logging, signal, sys
    from kumulus.runner import main
    from kumulus.runner.fake import FakeClient

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, main._on_signal)
    fake = FakeClient()
    fake.add_flow("f", "def handler(system, this):\\n    this.sleep(600)\\n")
    fake.add_execution("x", {"type": "FLOW", "flowRef": {"name": "f"}})
    env = {"KUMULUS_EXECUTION": "x", "KUMULUS_NAMESPACE": "default", "KUMULUS_ATTEMPT": "1"}
    rc = main.run(env, fake, watch_self=False)
    print(json.dumps(fake.executions["x"]["status"]["runner"]), flush=True)
    fake.close()
    sys.exit(rc)
    """
)


def test_sigterm_reports_cancelled_and_exits_3() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # block until the flow runs (no sleeping on our side)
        if line.startswith("Started Execution default/x"):
            break
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    runner = json.loads(stdout.strip().splitlines()[-1])
    assert runner["state"] == "ended"
    assert runner["result"]["status"] == "ENDED_CANCELLED"


def test_sleep_returns_to_python_at_least_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """``this.sleep(3.5)`` sleeps in slices of at most 1 s, so a SIGTERM that lands just before
    one slice's system call is handled within a second, not after the whole sleep."""
    from kumulus.runner import engine

    clock = [0.0]
    slices: list[float] = []

    def fake_sleep(seconds: float) -> None:
        slices.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(engine.time, "sleep", fake_sleep)
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    engine.sliced_sleep(3.5)
    assert slices == [1.0, 1.0, 1.0, 0.5]
    assert max(slices) <= engine.SIGNAL_CHECK_SECONDS
