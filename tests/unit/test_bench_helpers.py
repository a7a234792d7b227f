"""The benchmarks' pure helpers: baselines in the runner image, milestones, start-cost parsing.

The benchmarks themselves run only on a dev cluster (``bench/``, never timed tests); what is
checked here is that their baselines run what an Execution's Pod runs (the runner image, its
interpreter) and that the figures are read from the right fields.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import benchlib as bl
import runner_start

from kumulus.domain.settings import Settings

pytestmark = pytest.mark.unit


def test_baselines_run_the_runner_image_with_its_python() -> None:
    job = bl.bare_job("j-1")["spec"]["template"]["spec"]["containers"][0]
    pod = bl.bare_pod("p-1")["spec"]
    assert job["image"] == pod["containers"][0]["image"] == Settings().runner_image
    # python3 is the image's venv interpreter (first on its PATH); there is no bare "python".
    assert bl.BARE_RUNNER_COMMAND[0] == "python3"
    assert "automountServiceAccountToken" not in pod  # the token, as a Job's Pod has it
    assert bl.bare_pod("p-2", token=False)["spec"]["automountServiceAccountToken"] is False


def test_components_are_the_real_node_s() -> None:
    assert "node-agent" not in bl.COMPONENTS
    assert {"containerd", "kubelet", "kube-proxy", "coredns"} <= set(bl.COMPONENTS)


def test_a_bare_pod_is_its_own_object_and_running_is_only_seen_when_shown() -> None:
    marks = bl.Milestones()
    on_event = bl.pod_milestones(marks, bare=True)
    pod = {"metadata": {"name": "p-1"}, "status": {"phase": "Pending"}}
    on_event("ADDED", pod)
    on_event("MODIFIED", {**pod, "status": {"phase": "Succeeded"}})
    assert {"pod", "running", "pod-ended", "ended", "phase:Succeeded"} <= set(marks.times["p-1"])
    assert "running-seen" not in marks.times["p-1"]


def test_start_steps_are_parsed_from_the_pod_s_own_clock() -> None:
    log = "start100.250\npy 100.300 100.700\npy 100.800 100.900\n"
    steps = runner_start.parse_timed(created=100.0, ended=101.0, log=log)
    assert steps["create_to_first_process"] == pytest.approx(0.25)
    assert steps["interpreter_start"] == pytest.approx(0.05)
    assert steps["runner_imports"] == pytest.approx(0.4)
    assert steps["runner_imports_with_bytecode"] == pytest.approx(0.1)
    assert steps["exit_to_seen_ended"] == pytest.approx(0.1)  # after the last run


def test_heaviest_imports_are_the_top_level_ones() -> None:
    log = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:      2000 |       2000 |   yaml.error",
            "import time:      1000 |      30000 | yaml",
            "import time:       500 |      90000 | kumulus.runner.main",
        ]
    )
    assert runner_start.heaviest_imports(log, 2) == [("kumulus.runner.main", 90.0), ("yaml", 30.0)]
