"""Each node of a Ray cluster proves its own llama-server before the first trial: a real two-node
Ray cluster on this machine (Ray's own test cluster), the real binary, and one that dies by SIGILL."""

import os
import re
import shutil
import tempfile

import pytest
import ray
from ray.cluster_utils import Cluster

from llm_autotuner.errors import SetupError
from llm_autotuner.cluster.nodes import prepare_nodes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_nodes():
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # its own: never another test's Ray
    # Ray's test cluster writes its address to /tmp/ray/ray_current_cluster whatever its temp_dir,
    # and fails when no Ray has made that folder yet (a fresh machine).
    os.makedirs("/tmp/ray", exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp_dir,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_every_node_checks_its_binary_and_names_it(two_nodes, llama_server):
    lines = []
    binaries = prepare_nodes(None, progress=lines.append)
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert set(binaries) == alive and len(alive) == 2
    checked = {line.split("]")[0] for line in lines if "it served a completion on this machine" in line}
    assert len(checked) == 2, lines  # one check per node, each line naming its node


def test_a_node_whose_binary_dies_is_named_in_one_line(two_nodes, tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\nkill -ILL $$\n")
    binary.chmod(0o755)
    with pytest.raises(SetupError) as caught:
        prepare_nodes(str(binary))
    message = str(caught.value)
    assert re.match(r"node \S+ \([0-9a-f]{8}\): ", message), message
    assert f"engine.binary={binary} does not run on this machine" in message
    assert "killed by SIGILL (illegal instruction)" in message
