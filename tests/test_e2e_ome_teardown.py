"""OME trials' InferenceServices go whatever ends the run (Ctrl-C, SIGKILL and `autotuner cleanup`)
and however slowly the cluster deletes them, against the Kubernetes API emulator with the instant
stand-in engine. A file apart from test_e2e_ome.py: pytest-xdist runs a file on one worker, and
these runs wait on designed delays (a 30 s deletion grace)."""

import json
import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import Driver, instant_engine
from tests.fake_ome import PLURAL, FakeOme
from tests.k8s_emulator import KubeEmulator
from tests.test_e2e_ome import NS, ome_task

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_no_inference_service_outlives_an_interrupted_or_killed_driver(tmp_path, smollm2, tokenizer, sig):
    """Ctrl-C: the trial deletes its InferenceService on the way out. SIGKILL: nobody can, and
    `autotuner cleanup TASK` finds it by label and deletes it."""
    with KubeEmulator() as emulator:
        controller = FakeOme(emulator, str(instant_engine(tmp_path / "engine")), smollm2, tmp_path)
        try:
            kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
            path = tmp_path / "task.yaml"
            task = ome_task(tmp_path, kubeconfig, tokenizer, num_samples=2, scheduler="none", max_concurrent=1)
            path.write_text(yaml.safe_dump(task))
            with Driver(path) as driver:
                driver.read_until("trial 2: stage 1/2")  # the first trial finished, the second benchmarks
                assert len(emulator.objects(PLURAL, NS)) == 1
                driver.process.send_signal(sig)
                output = driver.finish(timeout_s=120)
            cleanup = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "cleanup", str(path)],
                                     capture_output=True, text=True, timeout=120)
            remaining = emulator.objects(PLURAL, NS)
        finally:
            controller.stop_all()
    assert cleanup.returncode == 0, cleanup.stderr
    if sig == signal.SIGINT:
        assert driver.process.returncode == 1, output[-3000:]
        assert cleanup.stdout.strip() == "nothing to clean up"  # the trial had deleted it
    assert remaining == []
    results = json.loads((tmp_path / "results" / "ome-e2e" / "results.json").read_text())
    assert results["all_results"][0]["status"] == "completed"  # written when it finished


def test_inference_services_that_take_30_s_to_go_never_overlap_and_the_run_finishes(tmp_path, smollm2, tokenizer):
    """As on a real cluster: the DELETE only marks the object (deletionTimestamp, a finalizer), its
    engine keeps running through its pod's 30 s termination grace, and only then is it gone."""
    with KubeEmulator() as emulator:
        emulator.set_deletion_delay(PLURAL, 30.0)
        controller = FakeOme(emulator, str(instant_engine(tmp_path / "engine")), smollm2, tmp_path, termination_grace_s=30.0)
        try:
            kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
            path = tmp_path / "task.yaml"
            # No re-measurement: each engine more is 30 s more, and the search's alone show the overlap.
            task = ome_task(tmp_path, kubeconfig, tokenizer, num_samples=1, seed=2, max_concurrent=1,
                            grace_period=1, reduction_factor=2, confirm_top_k=0)
            task["search_space"] = {"parallel": [1, 2, 4], "ubatch-size": [256, 512]}
            # Each trial holds the whole node, as a trial holds its GPUs from the budget on OME.
            task["benchmark"] = {"traffic_scenario": "D(32,16)", "concurrency": [1, 2], "max_requests_per_stage": 4,
                                 "client_cpus": 2.0}
            path.write_text(yaml.safe_dump(task))
            completed = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "run", str(path), "--no-dashboard"],
                                       capture_output=True, text=True, timeout=1500)
            remaining = emulator.objects(PLURAL, NS)
            lifetimes = sorted(controller.lifetimes, key=lambda life: life[1])
        finally:
            controller.stop_all()
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "ome-e2e" / "results.json").read_text())
    assert results["total_experiments"] == 2  # the baseline and a searched trial: none left pending
    assert len(lifetimes) == 2  # each engine gone when the run ended
    for (name, _, ended), (later, started, _) in zip(lifetimes, lifetimes[1:]):
        assert started >= ended, f"{later} started before {name}'s engine was gone: {lifetimes}"
    assert remaining == []
