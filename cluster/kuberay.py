"""The driver in the cluster: what `autotuner kuberay TASK` prints for `kubectl apply -f -`.

- the ServiceAccount, Role and RoleBinding of cluster/rbac.yaml, in the task's namespace (the
  ClusterRole for a runtime only when the task asks the tuner to create one);
- a ConfigMap holding the task, its results under RESULTS_MOUNT and no kubeconfig (in a pod the
  tuner uses the pod's service account and reaches engines by their in-cluster names);
- a PersistentVolumeClaim for the results;
- a KubeRay RayJob (or a RayCluster to run `autotuner run` in yourself) of one head pod, which runs
  the driver and the trials: on OME a trial is the load generator (genai-bench) and the engine is
  an InferenceService on the GPU nodes, so a pod with a CPU per running trial is the whole Ray
  cluster. The head offers the task's `gpu_budget` as `ome_gpu`, the Ray resource trials claim
  GPUs from (cluster/ome.py); its pod's name, uid and namespace reach the driver through the
  downward API, so the pod owns the run's Lease (cluster/lease.py): delete the pod (a RayJob does
  once it finishes and its TTL passes) and Kubernetes removes what the run left.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
from typing import Any

import ray
import yaml

from llm_autotuner.cluster import kube
from llm_autotuner.cluster.backend import cheapest_params, trial_claim
from llm_autotuner.cluster.lease import POD_ENV
from llm_autotuner.cluster.ome import OME_GPU_RESOURCE
from llm_autotuner.errors import TaskError
from llm_autotuner.task import Task

TASK_MOUNT, TASK_FILE = "/etc/autotuner", "task.yaml"
RESULTS_MOUNT = "/results"
SECRETS = "autotuner-secrets"  # optional Secret whose keys become the driver's environment (HF_TOKEN, API keys)
KINDS = ("rayjob", "raycluster")
FINISHED_TTL_S = 3600  # a finished RayJob keeps its head pod this long: time to copy the results


def trials_at_once(task: Task) -> int:
    """How many trials the GPU budget lets run at once (each needs at least the cheapest config's GPUs)."""
    smallest = trial_claim(task, cheapest_params(task), node_cpus=1).get(OME_GPU_RESOURCE, 0.0)
    by_budget = math.floor(task.deployment.gpu_budget / smallest) if smallest else task.deployment.gpu_budget
    return max(1, min(by_budget, task.search.max_concurrent or by_budget))


def in_cluster_task(raw: dict[str, Any]) -> str:
    """The task file as the pod runs it: results on the volume, the pod's own credentials."""
    task = copy.deepcopy(raw)
    task["results_dir"] = RESULTS_MOUNT
    for field in ("kubeconfig", "context"):
        task["deployment"].pop(field, None)
    return yaml.safe_dump(task, sort_keys=False, allow_unicode=True)


def rbac(namespace: str, with_runtime: bool, port_forward: bool) -> list[dict]:
    """cluster/rbac.yaml for this task: only what it uses (no ClusterRole without a runtime to
    create, no port-forward when the engines are reached by their in-cluster names)."""
    documents = []
    for document in yaml.safe_load_all(kube.RBAC_MANIFEST.read_text()):
        if document["kind"] in ("ClusterRole", "ClusterRoleBinding") and not with_runtime:
            continue
        if document["kind"] == "Role" and not port_forward:
            document["rules"] = [rule for rule in document["rules"] if rule["resources"] != ["pods/portforward"]]
        if "namespace" in document["metadata"]:
            document["metadata"]["namespace"] = namespace
        if document["kind"] == "ClusterRoleBinding":  # cluster-wide: one per namespace, named after it
            document["metadata"]["name"] = f"autotuner-runtime-{namespace}"
        for subject in document.get("subjects", []):
            subject["namespace"] = namespace
        documents.append(document)
    return documents


def head_group(task: Task, name: str, image: str, service_account: str) -> dict:
    trials = trials_at_once(task)
    cpus = math.ceil(trials * max(task.benchmark.client_cpus, 0.5)) + 1  # + the driver
    memory = f"{2 + trials}Gi"  # the driver and Ray, then about 1 GiB per genai-bench
    env = [{"name": variable, "valueFrom": {"fieldRef": {"fieldPath": field}}} for variable, field in POD_ENV.items()]
    mounts = [{"name": "task", "mountPath": TASK_MOUNT, "readOnly": True}, {"name": "results", "mountPath": RESULTS_MOUNT}]
    volumes = [{"name": "task", "configMap": {"name": name}},
               {"name": "results", "persistentVolumeClaim": {"claimName": name}}]
    jobs = task.benchmark.benchmark_job
    if task.benchmark.runner == "benchmarkjob" and jobs is not None:
        # The driver reads each BenchmarkJob's result files where the jobs write them: the claim of
        # output_storage_uri (pvc://CLAIM/PATH), its PATH mounted at results_mount.
        claim, _, path = jobs.output_storage_uri.removeprefix("pvc://").partition("/")
        mounts.append({"name": "benchmark-results", "mountPath": jobs.results_mount}
                      | ({"subPath": path.strip("/")} if path.strip("/") else {}))
        volumes.append({"name": "benchmark-results", "persistentVolumeClaim": {"claimName": claim}})
    return {
        "rayStartParams": {"num-cpus": str(cpus),
                           # KubeRay pastes each value into a bash command line unquoted: the JSON
                           # carries its own quotes (KubeRay strips them when it reads the value).
                           "resources": "'" + json.dumps({OME_GPU_RESOURCE: task.deployment.gpu_budget},
                                                         separators=(",", ":")) + "'",
                           "dashboard-host": "0.0.0.0"},
        "template": {"spec": {
            "serviceAccountName": service_account,
            "containers": [{
                "name": "ray-head", "image": image, "env": env,
                "envFrom": [{"secretRef": {"name": SECRETS, "optional": True}}],
                "resources": {"requests": {"cpu": str(cpus), "memory": memory},
                              "limits": {"cpu": str(cpus), "memory": memory}},
                "ports": [{"containerPort": 8265, "name": "dashboard"}],
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }},
    }


def manifests(task: Task, raw: dict[str, Any], image: str, kind: str = "rayjob", results_size: str = "10Gi") -> list[dict]:
    """Everything `kubectl apply` needs to run `task` (parsed from `raw`) inside the cluster."""
    if task.deployment.backend != "ome":
        raise TaskError(f"kuberay: deployment.backend is {task.deployment.backend}; the in-cluster driver "
                        "runs OME tasks (on one machine, run `autotuner run` there)")
    if kind not in KINDS:
        raise TaskError(f"kuberay: --kind must be one of {', '.join(KINDS)}, not {kind}")
    if not image.strip():
        raise TaskError("kuberay: --image must name the driver's container image")
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", results_size):
        raise TaskError(f"kuberay: --results-size must be a Kubernetes quantity such as 10Gi, not {results_size!r}")
    namespace = task.deployment.namespace
    name = kube.resource_name(task.name, "autotuner")
    labels = dict(kube.MANAGED_BY) | {kube.EXPERIMENT_LABEL: kube.label_value(task.name)}

    def metadata() -> dict:  # one per object: a shared dict would print as a YAML alias
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    access = rbac(namespace, task.deployment.create_runtime is not None, task.deployment.endpoint == "port-forward")
    service_account = next(d["metadata"]["name"] for d in access if d["kind"] == "ServiceAccount")
    cluster = {"rayVersion": ray.__version__, "headGroupSpec": head_group(task, name, image, service_account)}
    if kind == "rayjob":
        ray_object = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata(), "spec": {
            "entrypoint": shlex.join(["autotuner", "run", f"{TASK_MOUNT}/{TASK_FILE}"]),
            "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": FINISHED_TTL_S,
            "rayClusterSpec": cluster}}
    else:
        ray_object = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": metadata(), "spec": cluster}
    return access + [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(), "data": {TASK_FILE: in_cluster_task(raw)}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata(),
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": results_size}}}},
        ray_object,
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the task file in the ConfigMap) as literal blocks, readable as written."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def to_yaml(documents: list[dict]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
