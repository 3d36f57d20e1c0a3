"""`autotuner kuberay`: what runs an OME task's driver inside the cluster, checked as `kubectl apply`
and the pod would see it."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml
from kubernetes import client

from llm_autotuner.cluster.lease import POD_ENV
from llm_autotuner.cluster.kube import RBAC_MANIFEST
from llm_autotuner.task import load_task, parse_task
from tests.crd_schema import crd_validator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ome-sglang.yaml"
IMAGE = "registry.example/autotuner:0.1.0"


def kuberay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", "kuberay", *args],
                          capture_output=True, text=True, timeout=120)


def documents(*args: str) -> dict[str, dict]:
    completed = kuberay(*args)
    assert completed.returncode == 0, completed.stderr
    return {document["kind"]: document for document in yaml.safe_load_all(completed.stdout)}


KUBERNETES = "1.30"  # the oldest Kubernetes version whose schemas the manifests are checked against
KUBERAY_SCHEMAS = {"RayJob": "rayjob.schema.json", "RayCluster": "raycluster.schema.json"}


def validate(document: dict) -> None:
    """As the API server would with strict field validation: KubeRay's kinds against KubeRay's CRDs
    (tests/data/crds), the rest against Kubernetes' own schemas (kubernetes-validate)."""
    if document["kind"] in KUBERAY_SCHEMAS:
        assert document["apiVersion"] == "ray.io/v1"
        crd_validator(KUBERAY_SCHEMAS[document["kind"]]).validate(document)
    else:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def round_trips(manifest: dict, model: str) -> bool:
    """Whether the kubernetes client's model of `model` keeps every field: a misspelt or misplaced
    field would be dropped by the API server without a word."""
    api = client.ApiClient()
    parsed = api.deserialize(json.dumps(manifest), model, "application/json")
    return api.sanitize_for_serialization(parsed) == manifest


def test_a_rayjob_runs_the_task_with_its_results_on_a_volume_and_the_gpu_budget_in_ray(tmp_path):
    objects = documents(str(EXAMPLE), "--image", IMAGE)
    task = load_task(EXAMPLE)
    assert list(objects) == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim", "RayJob"]
    assert {o["metadata"]["namespace"] for o in objects.values()} == {task.deployment.namespace}
    for document in objects.values():
        validate(document)

    job = objects["RayJob"]["spec"]
    head = job["rayClusterSpec"]["headGroupSpec"]
    pod = head["template"]
    (container,) = pod["spec"]["containers"]
    assert round_trips(pod, "V1PodTemplateSpec")
    assert container["image"] == IMAGE
    assert job["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert job["shutdownAfterJobFinishes"] is True

    # The task file the pod runs: where the entrypoint looks, results on the claim, no kubeconfig.
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["autotuner", "run"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_map = objects["ConfigMap"]
    task_volume = next(name for name, v in volumes.items() if v.get("configMap", {}).get("name") == config_map["metadata"]["name"])
    key = Path(argv[2]).relative_to(mounts[task_volume]).as_posix()
    in_pod = parse_task(yaml.safe_load(config_map["data"][key]))
    claim = objects["PersistentVolumeClaim"]["metadata"]["name"]
    results_volume = next(name for name, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
    assert in_pod.results_path.parent == Path(mounts[results_volume])
    assert in_pod.deployment.kubeconfig is None and in_pod.search_space == task.search_space

    # Ray holds the task's GPU budget, which trials claim their GPUs from; one CPU per running trial.
    # KubeRay runs `ray start ... --resources=<value>` through bash: the value must stay one word.
    (flag,) = shlex.split(f"--resources={head['rayStartParams']['resources']}")
    assert json.loads(flag.removeprefix("--resources=")) == {"ome_gpu": task.deployment.gpu_budget}
    assert int(head["rayStartParams"]["num-cpus"]) == 8 + 1  # 8 tp-1 trials fit 8 GPUs, + the driver
    assert container["resources"]["limits"]["cpu"] == head["rayStartParams"]["num-cpus"]

    # The pod owns the run's Lease: its name, uid and namespace reach the driver.
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == POD_ENV
    assert pod["spec"]["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    binding = objects["RoleBinding"]
    assert binding["subjects"][0]["name"] == objects["ServiceAccount"]["metadata"]["name"]
    assert binding["roleRef"]["name"] == objects["Role"]["metadata"]["name"]
    # In the cluster the engines are reached by name: no port-forward right is asked for.
    assert all("pods/portforward" not in rule["resources"] for rule in objects["Role"]["rules"])


def test_a_raycluster_has_the_same_head_and_no_job():
    job = documents(str(EXAMPLE), "--image", IMAGE)["RayJob"]["spec"]["rayClusterSpec"]
    objects = documents(str(EXAMPLE), "--image", IMAGE, "--kind", "raycluster")
    assert "RayJob" not in objects and objects["RayCluster"]["spec"] == job
    validate(objects["RayCluster"])


def test_every_manifest_shipped_in_cluster_validates():
    for document in yaml.safe_load_all(RBAC_MANIFEST.read_text()):
        validate(document)


def test_a_misspelt_field_is_caught_by_each_kind_of_check():
    objects = documents(str(EXAMPLE), "--image", IMAGE)
    job, claim = objects["RayJob"], objects["PersistentVolumeClaim"]
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    claim["spec"]["accesModes"] = claim["spec"].pop("accessModes")
    for wrong in (job, claim):
        with pytest.raises(Exception, match="shutdownAfterJobFinish'|accesModes"):
            validate(wrong)


def test_a_local_task_is_refused_in_one_line():
    completed = kuberay(str(ROOT / "examples" / "quickstart-cpu.yaml"), "--image", IMAGE)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.strip().count("\n") == 0
    assert "deployment.backend is local" in completed.stderr


@pytest.mark.parametrize("change, message", [
    ({"search": {"scheduler_args": {"mode": "up"}}}, "search: the asha scheduler refuses these settings"),
    ({"search_space": {"tp-size": [0, 1]}}, "search_space.tp-size: 0 is not a GPU count"),
])
def test_the_checks_validate_makes_run_before_anything_is_printed(tmp_path, change, message):
    # A task the driver would refuse in the cluster's pod is refused here, before `kubectl apply`.
    data = yaml.safe_load(EXAMPLE.read_text())
    for key, value in change.items():
        data[key] = {**data.get(key, {}), **value} if key == "search" else value
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    completed = kuberay(str(path), "--image", IMAGE)
    assert completed.returncode == 2 and completed.stdout == ""
    assert message in completed.stderr and completed.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("args, message", [(["--image", ""], "--image must name"),
                                           (["--image", IMAGE, "--results-size", "banana"], "--results-size")])
def test_bad_options_are_refused_in_one_line(args, message):
    completed = kuberay(str(EXAMPLE), *args)
    assert completed.returncode == 2 and completed.stdout == "" and message in completed.stderr


def test_the_image_is_rays_own_at_the_pinned_version_with_the_project_installed_from_its_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+$", dockerfile, re.M)
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    ray_pin = next(Requirement(p) for p in pins if p.startswith("ray["))
    assert ray_pin.specifier.contains(version) and version == ray.__version__
    assert re.search(r"^COPY .* \. (\S+)$", dockerfile, re.M)
    assert re.search(r"^RUN pip install .*/tmp/autotuner", dockerfile, re.M)
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize("endpoint, forwards", [("port-forward", True), ("in-cluster", False)])
def test_the_role_asks_for_port_forwards_only_when_the_task_uses_them(tmp_path, endpoint, forwards):
    task = yaml.safe_load(EXAMPLE.read_text())
    task["deployment"]["endpoint"] = endpoint
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    role = documents(str(path), "--image", IMAGE)["Role"]
    assert any("pods/portforward" in rule["resources"] for rule in role["rules"]) == forwards


def test_each_namespace_gets_its_own_cluster_role_binding(tmp_path):
    """A ClusterRoleBinding is cluster-wide: were the name shared, applying a second namespace's
    manifests would take the runtime role from the first namespace's service account."""
    bindings = []
    for namespace in ("team-a", "team-b"):
        task = yaml.safe_load(EXAMPLE.read_text())
        task["deployment"] |= {"namespace": namespace,
                               "create_runtime": {"image": "lmsysorg/sglang:v0.5.5", "model_architecture": "LlamaForCausalLM",
                                                  "command": ["python3", "-m", "sglang.launch_server"]}}
        path = tmp_path / f"{namespace}.yaml"
        path.write_text(yaml.safe_dump(task))
        bindings.append(documents(str(path), "--image", IMAGE)["ClusterRoleBinding"])
    assert bindings[0]["metadata"]["name"] != bindings[1]["metadata"]["name"]
    assert [b["subjects"][0]["namespace"] for b in bindings] == ["team-a", "team-b"]


def test_a_benchmarkjob_task_mounts_the_claim_its_jobs_write_to_where_the_driver_reads():
    """The driver reads each BenchmarkJob's files under results_mount: the head pod must mount the
    claim of output_storage_uri (its path) there, or every trial fails with no results."""
    example = ROOT / "examples" / "ome-sglang-benchmarkjob.yaml"
    task = yaml.safe_load(example.read_text())["benchmark"]["benchmark_job"]
    objects = documents(str(example), "--image", IMAGE)
    validate(objects["RayJob"])
    pod = objects["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == task["results_mount"]]
    claim, path = task["output_storage_uri"].removeprefix("pvc://").split("/", 1)
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
    assert mount.get("subPath") == path
