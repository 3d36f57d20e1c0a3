"""OME manifests: valid against the real CRD schemas, and every task or trial value comes back exactly,
however it is spelt (quotes, colons, newlines, template syntax)."""

from __future__ import annotations

import random
from pathlib import Path

import jsonschema
import pytest
import yaml

from llm_autotuner.cluster import manifests
from llm_autotuner.cluster.engines import SGLANG
from tests.crd_schema import crd_validator, kube_schema

SAMPLES = Path(__file__).parent.parent / "data" / "ome-samples"
SCHEMA_FILES = {"InferenceService": "inferenceservice.schema.json", "BenchmarkJob": "benchmarkjob.schema.json",
                "ClusterServingRuntime": "clusterservingruntime.schema.json"}

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TRICKY = ['it\'s "quoted"', "key: value", "x\n  evil: true", "{{ 7*7 }}", "{% if true %}x{% endif %}",
          "{# comment #}", "- item", "&anchor *alias", "!!python/object/apply:os.system", "# not a comment",
          "  padded  ", "", "null", "true", "yes", "0x1F", "1e3", "~", "---", "[1, 2]", "{a: b}", "tab\there",
          "back\\slash", "crlf\r\n", "é 😀 \u2028 \x85 \x7f \x00"]
RANDOM_CHARS = "abcXYZ019 :-\"'{}[]#&*!|>%@`,?\n\t\\é😀\u2028"


def test_int_or_string_accepts_both_and_nothing_else():
    validator = jsonschema.Draft7Validator(kube_schema({"x-kubernetes-int-or-string": True}))
    assert validator.is_valid(8080) and validator.is_valid("http1") and not validator.is_valid(80.5)


def _validator(kind: str) -> jsonschema.Draft7Validator:
    return crd_validator(SCHEMA_FILES[kind])


def validate(manifest: dict) -> None:
    assert manifest["apiVersion"] == "ome.io/v1beta1"
    _validator(manifest["kind"]).validate(manifest)


def _service(**overrides) -> dict:
    fields = dict(name="trial-7", namespace="tuning", labels={"app": "autotuner"}, model_name="qwen3-0-6b",
                  runtime_name="srt-qwen3-0-6b", engine_args=["--mem-fraction-static", "0.8"], gpus=1)
    return manifests.inference_service(**(fields | overrides))


def _benchmark(**overrides) -> dict:
    fields = dict(name="trial-7-bench", namespace="tuning", labels={"trial": "7"},
                  endpoint_url="http://trial-7.tuning.svc.cluster.local:8080", model_name="Qwen/Qwen3-0.6B",
                  tokenizer=None, task="text-to-text", traffic_scenarios=["D(100,100)", "N(480,240)/(300,150)"],
                  num_concurrency=[1, 8, 64], max_time_per_iteration=15, max_requests_per_iteration=100,
                  output_storage_uri="pvc://benchmark-results/trial-7")
    return manifests.benchmark_job(**(fields | overrides))


def _runtime(**overrides) -> dict:
    fields = dict(name="srt-autotuner", labels={"app": "autotuner"},
                  image="docker.io/lmsysorg/sglang:v0.5.5.post3-cu129-amd64", model_architecture="Qwen3ForCausalLM",
                  gpus=2, command=["python3", "-m", "sglang.launch_server", "--host", "0.0.0.0", "--port", "8080",
                                   "--model-path", "$(MODEL_PATH)", "--tp-size", "2"])
    return manifests.cluster_serving_runtime(**(fields | overrides))


def test_sglang_service_with_tp2_dp2_flags():
    flags = SGLANG.merged({}, {"tp": 2, "dp": 2, "mem_frac": 0.85, "schedule-policy": "lpm"})
    argv = SGLANG.flag_argv(flags)
    gpus = int(SGLANG.resources(flags)["GPU"])
    isvc = _service(engine_args=argv, gpus=gpus, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                    tolerations=[GPU_TOLERATION, {"key": "dedicated", "operator": "Equal", "value": "tuning",
                                                  "effect": "NoExecute", "tolerationSeconds": 300}],
                    env={"NCCL_DEBUG": "INFO", "SGLANG_LOG": "1"}, annotations={"autotuner/trial": "7"})
    validate(isvc)
    assert isvc["metadata"] == {"name": "trial-7", "namespace": "tuning", "labels": {"app": "autotuner"},
                                "annotations": {"autotuner/trial": "7"}}
    assert isvc["spec"]["model"] == {"name": "qwen3-0-6b"} and isvc["spec"]["runtime"] == {"name": "srt-qwen3-0-6b"}
    engine = isvc["spec"]["engine"]
    assert (engine["minReplicas"], engine["maxReplicas"]) == (1, 1)
    assert engine["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert engine["tolerations"][0] == GPU_TOLERATION and engine["tolerations"][1]["tolerationSeconds"] == 300
    runner = engine["runner"]
    assert runner["name"] == "ome-container"
    assert "command" not in runner  # the runtime's launch line stays; these flags follow it
    assert runner["args"] == argv
    assert argv[:4] == ["--tp-size", "2", "--dp-size", "2"] and "--mem-fraction-static" in argv
    assert runner["env"] == [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "SGLANG_LOG", "value": "1"}]
    assert runner["resources"] == {"requests": {"nvidia.com/gpu": 4}, "limits": {"nvidia.com/gpu": 4}}


def test_service_with_a_full_command_puts_the_flags_after_it():
    command = ["python3", "-m", "sglang.launch_server", "--model-path", "$(MODEL_PATH)", "--port", "8080"]
    isvc = _service(command=command, engine_args=["--tp-size", "2"], gpus=2)
    validate(isvc)
    runner = isvc["spec"]["engine"]["runner"]
    assert runner["command"] == command and runner["args"] == ["--tp-size", "2"]
    assert "annotations" not in isvc["metadata"] and "nodeSelector" not in isvc["spec"]["engine"]


def _random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(TRICKY)
    return "".join(rng.choice(RANDOM_CHARS) for _ in range(rng.randint(0, 16)))


def _random_value(rng: random.Random) -> bool | int | float | str:
    return rng.choice([lambda: rng.random() < 0.5, lambda: rng.randint(-10**9, 10**9),
                       lambda: rng.uniform(-1e6, 1e6), lambda: _random_text(rng)])()


def _argv(flags: dict) -> list[str]:
    """Like EngineProfile.flag_argv without its value check, so the renderer alone is tested on
    values the task validation would refuse."""
    argv = []
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not False:
            argv += [f"--{name}", str(value)]
    return argv


def test_random_flag_dicts_validate_and_round_trip_exactly():
    rng = random.Random(20260506)
    for _ in range(50):
        flags = {f"flag-{i}": _random_value(rng) for i in range(rng.randint(0, 10))}
        texts = {f"{_random_text(rng)}#{i}": str(value) for i, value in enumerate(flags.values())}
        argv = _argv(flags)
        model_name = _random_text(rng)
        isvc = _service(engine_args=argv, command=[_random_text(rng)], model_name=model_name, env=texts,
                        annotations=texts, node_selector=texts, labels=texts)
        validate(isvc)
        runner = isvc["spec"]["engine"]["runner"]
        assert runner.get("args", []) == argv
        assert runner.get("env", []) == [{"name": key, "value": value} for key, value in texts.items()]
        assert isvc["metadata"]["labels"] == texts and isvc["metadata"].get("annotations", {}) == texts
        assert isvc["spec"]["engine"].get("nodeSelector", {}) == texts
        assert isvc["spec"]["model"]["name"] == model_name
        assert yaml.safe_load(manifests.to_yaml(isvc)) == isvc


@pytest.mark.parametrize("value", ["x\n  evil: true", "{{ 7*7 }}", "{% raw %}", "a\"}, evil: [1]"])
def test_injected_structure_or_template_syntax_stays_a_literal_string(value):
    isvc = _service(engine_args=["--served-model-name", value], env={"V": value}, annotations={value: value},
                    model_name=value)
    validate(isvc)
    assert isvc["spec"]["engine"]["runner"]["args"] == ["--served-model-name", value]
    assert isvc["spec"]["engine"]["runner"]["env"] == [{"name": "V", "value": value}]
    assert isvc["metadata"]["annotations"] == {value: value} and isvc["spec"]["model"]["name"] == value
    assert "evil" not in isvc and "evil" not in isvc["spec"]["engine"]["runner"]


def test_a_template_interpolation_without_the_yaml_filter_does_not_render():
    with pytest.raises(TypeError, match="yaml filter"):
        manifests._TEMPLATES.from_string("value: {{ value }}").render(value="x")


def test_benchmark_job_uses_the_direct_endpoint_with_the_model_name():
    job = _benchmark(image="ghcr.io/sgl-project/genai-bench:0.1.132")
    validate(job)
    spec = job["spec"]
    assert spec["endpoint"] == {"endpoint": {"url": "http://trial-7.tuning.svc.cluster.local:8080",
                                             "apiFormat": "openai", "modelName": "Qwen/Qwen3-0.6B"}}
    assert spec["task"] == "text-to-text" and spec["trafficScenarios"] == ["D(100,100)", "N(480,240)/(300,150)"]
    assert spec["numConcurrency"] == [1, 8, 64]
    assert (spec["maxTimePerIteration"], spec["maxRequestsPerIteration"]) == (15, 100)
    assert spec["outputLocation"] == {"storageUri": "pvc://benchmark-results/trial-7"}
    assert spec["podOverride"] == {"image": "ghcr.io/sgl-project/genai-bench:0.1.132"}
    assert "podOverride" not in _benchmark()["spec"]


@pytest.mark.parametrize("field, value", [("tokenizer", "Qwen/Qwen3-0.6B"), ("api_key_secret", "bench-key"),
                                          ("extra_args", ["--warmup-ratio", "0.1"])])
def test_benchmark_job_refuses_what_the_crd_cannot_carry(field, value):
    with pytest.raises(ValueError, match=field):
        _benchmark(**{field: value})


@pytest.mark.parametrize("architecture", ["Qwen3ForCausalLM", None])
def test_cluster_serving_runtime_validates(architecture):
    runtime = _runtime(model_architecture=architecture)
    validate(runtime)
    assert "namespace" not in runtime["metadata"]
    assert runtime["spec"]["supportedModelFormats"][0].get("modelArchitecture") == architecture
    assert runtime["spec"]["protocolVersions"] == ["openAI"]
    runner = runtime["spec"]["engineConfig"]["runner"]
    assert runner["name"] == "ome-container" and runner["command"][-2:] == ["--tp-size", "2"]
    assert runner["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]
    assert runner["readinessProbe"]["httpGet"] == {"path": "/health_generate", "port": 8080}
    assert runner["resources"] == {"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 2}}


def _set(manifest: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    node[last] = value
    return manifest


@pytest.mark.parametrize("kind, path, value", [
    ("InferenceService", "spec.engine.minReplicas", "1"),                 # wrong type
    ("InferenceService", "spec.engine.nodeSelecter", {"a": "b"}),          # misspelt field
    ("InferenceService", "spec.engine.runner.resources.limits", {"nvidia.com/gpu": "four"}),  # not a quantity
    ("InferenceService", "spec.runtime", {}),                               # required name missing
    ("BenchmarkJob", "spec.task", "text-to-speech"),                        # not in the enum
    ("BenchmarkJob", "spec.endpoint.endpoint.url", "trial-7:8080"),          # no http(s):// scheme
    ("BenchmarkJob", "spec.numConcurrency", [1, 1]),                        # a set
    ("ClusterServingRuntime", "spec.engineConfig.runner.readinessProbe.httpGet.port", [8080]),
])
def test_validator_rejects_invalid_manifests(kind, path, value):
    manifest = {"InferenceService": _service, "BenchmarkJob": _benchmark, "ClusterServingRuntime": _runtime}[kind]()
    validate(manifest)
    with pytest.raises(jsonschema.ValidationError):
        validate(_set(manifest, path, value))


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")) if SAMPLES.is_dir() else [],
                         ids=lambda path: path.stem)
def test_ome_samples_validate(sample):
    validate(yaml.safe_load(sample.read_text()))


def test_all_three_samples_are_present():
    assert {yaml.safe_load(path.read_text())["kind"] for path in SAMPLES.glob("*.yaml")} == set(SCHEMA_FILES)


@pytest.mark.parametrize("overrides, error", [
    ({"name": "Trial_7"}, ValueError), ({"namespace": "-tuning"}, ValueError), ({"gpus": -1}, ValueError),
    ({"gpus": True}, ValueError), ({"engine_args": ["--tp-size", 2]}, TypeError),
    ({"env": {"N": 1}}, TypeError), ({"engine_args": ["--mem-fraction-static", 0.8]}, TypeError),
])
def test_service_refuses_bad_inputs_before_rendering(overrides, error):
    with pytest.raises(error):
        _service(**overrides)


def test_a_cpu_engine_requests_no_gpus_and_keeps_the_runtimes_resources():
    manifest = _service(gpus=0)
    validate(manifest)
    assert "resources" not in manifest["spec"]["engine"]["runner"]


def test_the_winner_exported_for_ome_is_a_valid_inference_service_without_the_tuners_labels():
    from llm_autotuner.cluster.deployer import EngineSpec
    from llm_autotuner.cluster.ome import OmeBackend
    from llm_autotuner.task import OmeDeployment

    settings = OmeDeployment(backend="ome", namespace="llm-tuning", model="llama", runtime="srt-llama", gpu_budget=8,
                             tolerations=[GPU_TOLERATION])
    spec = EngineSpec(experiment="llama-sglang", run_id="", trial_id="best", profile=SGLANG, executable="",
                      model_path="$(MODEL_PATH)", served_name="llama", workdir=Path("."),
                      flags={"tp-size": 2, "mem-fraction-static": "0.85", "schedule-policy": "lpm"})
    (name, text), = OmeBackend(settings).export(spec).items()
    manifest = yaml.safe_load(text)
    validate(manifest)
    assert name == "best_inferenceservice.yaml"
    assert manifest["metadata"]["name"] == "llama-sglang-tuned" and not manifest["metadata"].get("labels")
    assert "ownerReferences" not in manifest["metadata"]
    runner = manifest["spec"]["engine"]["runner"]
    assert runner["args"] == ["--tp-size", "2", "--mem-fraction-static", "0.85", "--schedule-policy", "lpm"]
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == 2
