"""Each node of a Ray cluster checks its engine and genai-bench, and proves its own llama-server,
before the first trial: a real two-node Ray cluster on this machine (Ray's own test cluster), the
real binary, one that dies by SIGILL, and programs that are not there."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from llm_autotuner.cluster import records
from llm_autotuner.cluster.local import LocalBackend
from llm_autotuner.cluster.procs import start_time
from llm_autotuner.errors import SetupError
from llm_autotuner.task import LocalDeployment
from llm_autotuner.cluster.node_check import NodeCheck
from llm_autotuner.cluster.nodes import check_nodes

pytestmark = pytest.mark.e2e

# The second node's state folder, made by the fixture (not at import: every xdist worker imports this file).
OTHER_NODE_STATE = ""


@pytest.fixture(scope="module")
def two_nodes():
    global OTHER_NODE_STATE
    OTHER_NODE_STATE = tempfile.mkdtemp(prefix="autotuner-node-state-")
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # its own: never another test's Ray
    # Ray's test cluster writes its address to /tmp/ray/ray_current_cluster whatever its temp_dir,
    # and fails when no Ray has made that folder yet (a fresh machine).
    os.makedirs("/tmp/ray", exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp_dir,
                                                            "include_dashboard": False})
    # The second node keeps its engine records apart, as another machine does.
    cluster.add_node(num_cpus=1, env_vars={"XDG_STATE_HOME": OTHER_NODE_STATE})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(OTHER_NODE_STATE, ignore_errors=True)


def test_every_node_checks_its_binary_and_names_it(two_nodes, llama_server):
    lines = []
    binaries = check_nodes(NodeCheck(prove_llama_server=True), progress=lines.append)
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert set(binaries) == alive and len(alive) == 2
    checked = {line.split("]")[0] for line in lines if "it served a completion on this machine" in line}
    assert len(checked) == 2, lines  # one check per node, each line naming its node


def test_a_node_whose_binary_dies_is_named_in_one_line(two_nodes, tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\nkill -ILL $$\n")
    binary.chmod(0o755)
    with pytest.raises(SetupError) as caught:
        check_nodes(NodeCheck(prove_llama_server=True, task_binary=str(binary)))
    message = str(caught.value)
    assert re.match(r"node \S+ \([0-9a-f]{8}\): ", message), message
    assert f"engine.binary={binary} does not run on this machine" in message
    assert "killed by SIGILL (illegal instruction)" in message


def test_a_node_without_the_engine_or_genai_bench_is_named_in_one_line(two_nodes, tmp_path):
    check_nodes(NodeCheck(modules=("genai_bench",)))  # installed on both: no error
    with pytest.raises(SetupError) as caught:
        check_nodes(NodeCheck(executable=str(tmp_path / "vllm")))
    assert re.match(rf"node \S+ \([0-9a-f]{{8}}\): the engine {tmp_path / 'vllm'} is not installed there",
                    str(caught.value)), caught.value
    with pytest.raises(SetupError) as caught:
        check_nodes(NodeCheck(modules=("no_such_load_generator",)))
    assert re.match(r"node \S+ \([0-9a-f]{8}\): no-such-load-generator is not installed there",
                    str(caught.value)), caught.value


def test_a_file_a_trial_reads_missing_on_a_node_is_named_with_the_node(two_nodes, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    check_nodes(NodeCheck(files=(("the model", str(model)),)))  # there on both: no error
    with pytest.raises(SetupError) as caught:
        check_nodes(NodeCheck(files=(("the model", str(model)), ("the tokenizer", str(tmp_path / "tok")))))
    assert re.match(rf"node \S+ \([0-9a-f]{{8}}\): the tokenizer {tmp_path / 'tok'} is not there: ", str(caught.value)), \
        caught.value


def test_leftover_engines_are_swept_on_every_node(two_nodes):
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = records.EngineRecord("dead-run-7f3a", "sweep", "t1", leftover.pid, start_time(leftover.pid), "sleep")
        path = write_on_other_node(record)
        assert record not in records.engine_records()  # the driver's node does not see it
        lines = LocalBackend(LocalDeployment()).cleanup("sweep")
        assert lines == [f"engine process group {leftover.pid} (sweep, trial t1) left by run dead-run-7f3a"]
        assert leftover.wait(timeout=30) is not None and not path.exists()
    finally:
        leftover.kill()


def write_on_other_node(record: records.EngineRecord) -> Path:
    path = Path(OTHER_NODE_STATE) / "autotuner" / "engines" / f"{record.run_id}-{record.trial_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record)))
    return path


def test_cleanup_with_an_address_sweeps_every_node_judging_each_run_on_its_drivers_node(two_nodes, tmp_path):
    """`autotuner cleanup TASK --address`: engines on the other node (which keeps its own records,
    as another machine does) whose runs' drivers were on the head. The run that is over loses its
    engine; the run still going (this process, recorded on the head) keeps its own, although the
    other node holds no record of that run."""
    here = records.host_id()
    over, going = (subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2))
    live_run = f"going-{uuid.uuid4().hex[:8]}"
    registration = records.register_run(live_run, "sweep-cli")  # the head's state: this process's
    task = yaml.safe_load(Path("examples/quickstart-cpu.yaml").read_text()) | {"name": "sweep-cli"}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    paths = {}
    try:
        for process, run_id in ((over, "over-7f3a"), (going, live_run)):
            paths[process] = write_on_other_node(records.EngineRecord(
                run_id, "sweep-cli", "t1", process.pid, start_time(process.pid), "sleep", host=here, run_host=here))
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        result = subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "cleanup", str(tmp_path / "task.yaml"),
                                 "--address", two_nodes.address], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"sweeping the 2 nodes of the Ray cluster at {two_nodes.address}",
            f"removed engine process group {over.pid} (sweep-cli, trial t1) left by run over-7f3a"]
        assert over.wait(timeout=30) is not None and not paths[over].exists()
        assert going.poll() is None and paths[going].exists()
    finally:
        registration.unlink(missing_ok=True)
        over.kill(), going.kill()
        for path in paths.values():  # the live run's record stays by design; its process is gone now
            path.unlink(missing_ok=True)
