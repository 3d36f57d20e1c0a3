"""Kubernetes manifests for OME: a trial's InferenceService, the BenchmarkJob that measures it and
the ClusterServingRuntime it can run on.

Each manifest is a Jinja2 template in the `templates` package, rendered and parsed back into the dict
the caller gets (to send to the API, or to print with `to_yaml`). Values come from tasks and trial
parameters, so every one is interpolated through the `yaml` filter, which writes it as a quoted YAML
flow node: a value can never add keys, lists or template syntax, it always parses back to itself.
The environment enforces this: an interpolation without the filter fails to render.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2
import yaml

# Names the OME webhook accepts (it rejects others; the CRD schema itself does not check names).
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class _YamlNode(str):
    """Text the `yaml` filter produced: the only thing a template may output."""


def _yaml_string(text: str) -> str:
    """A double-quoted YAML scalar in plain ASCII, every other character escaped.

    Not `json.dumps`/`tojson`: those write characters beyond U+FFFF as surrogate pairs, which a YAML
    reader decodes into two separate (wrong) characters."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _yaml_node(value: Any) -> str:
    """A YAML flow node that parses back to exactly `value`."""
    if isinstance(value, str):
        return _yaml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_node(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_node(key)}: {_yaml_node(item)}" for key, item in value.items()) + "}"
    # Floats are refused: YAML 1.1 reads some of their spellings (e.g. 1e-05) back as strings.
    raise TypeError(f"cannot render {type(value).__name__} {value!r} into a manifest")


def _filtered_only(value: Any) -> Any:
    if not isinstance(value, _YamlNode):
        raise TypeError(f"template output {value!r} did not pass through the yaml filter")
    return value


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("llm_autotuner.templates", "."),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # the output is YAML, not HTML; the yaml filter does the escaping
    finalize=_filtered_only,
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.filters["yaml"] = lambda value: _YamlNode(_yaml_node(value))


def _render(template: str, **values: Any) -> dict:
    return yaml.safe_load(_TEMPLATES.get_template(template).render(**values))


def _check_name(field: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{field} {name!r} is not a valid name (lowercase letters, digits and '-')")


def _check_strings(field: str, values: list[str] | dict[str, str] | None) -> None:
    """Kubernetes wants strings in argv, env and maps; a number there would fail only at the API."""
    items = [*values.keys(), *values.values()] if isinstance(values, dict) else list(values or [])
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{field}: every item, key and value must be a string, not {item!r}")


def _check_positive(field: str, value: int, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{field} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def inference_service(*, name: str, namespace: str, labels: dict[str, str], model_name: str,
                      runtime_name: str, engine_args: list[str], gpus: int,
                      command: list[str] | None = None, node_selector: dict[str, str] | None = None,
                      tolerations: list[dict] | None = None, env: dict[str, str] | None = None,
                      annotations: dict[str, str] | None = None) -> dict:
    """One trial's server: `engine_args` follow the runtime's command, or `command` if given.
    `gpus` (tp x dp) is both requested and limited; 0 (a CPU engine) leaves the runtime's resources. Tolerations replace the runtime's, so a GPU
    taint toleration must be repeated here."""
    _check_name("name", name)
    _check_name("namespace", namespace)
    for field, values in (("labels", labels), ("engine_args", engine_args), ("command", command),
                          ("node_selector", node_selector), ("env", env), ("annotations", annotations)):
        _check_strings(field, values)
    _check_positive("gpus", gpus, allow_zero=True)
    return _render("inference_service.yaml.j2", name=name, namespace=namespace, labels=labels,
                   model_name=model_name, runtime_name=runtime_name, engine_args=engine_args, gpus=gpus,
                   command=command, node_selector=node_selector, tolerations=tolerations, env=env,
                   annotations=annotations)


def benchmark_job(*, name: str, namespace: str, labels: dict[str, str], endpoint_url: str,
                  model_name: str, tokenizer: str | None, task: str, traffic_scenarios: list[str],
                  num_concurrency: list[int], max_time_per_iteration: int, max_requests_per_iteration: int,
                  output_storage_uri: str, image: str | None = None, api_key_secret: str | None = None,
                  extra_args: list[str] | None = None) -> dict:
    """A genai-bench run against `endpoint_url` (an OpenAI-compatible server serving `model_name`).
    `max_time_per_iteration` is in minutes.

    OME v0.1.5's BenchmarkJob has no field for a tokenizer, an API key or extra genai-bench flags, and
    for a direct endpoint its controller passes genai-bench neither --model-tokenizer nor --api-key.
    Rather than drop them silently, this refuses them: `tokenizer`, `api_key_secret` and `extra_args`
    must be None (or empty)."""
    unsupported = [field for field, value in (("tokenizer", tokenizer), ("api_key_secret", api_key_secret),
                                              ("extra_args", extra_args)) if value]
    if unsupported:
        raise ValueError(f"OME's BenchmarkJob cannot carry {', '.join(unsupported)}")
    _check_name("name", name)
    _check_name("namespace", namespace)
    _check_strings("labels", labels)
    _check_strings("traffic_scenarios", traffic_scenarios)
    _check_positive("max_time_per_iteration", max_time_per_iteration)
    _check_positive("max_requests_per_iteration", max_requests_per_iteration)
    for level in num_concurrency:
        _check_positive("num_concurrency", level)
    return _render("benchmark_job.yaml.j2", name=name, namespace=namespace, labels=labels,
                   endpoint_url=endpoint_url, model_name=model_name, task=task,
                   traffic_scenarios=traffic_scenarios, num_concurrency=num_concurrency,
                   max_time_per_iteration=max_time_per_iteration,
                   max_requests_per_iteration=max_requests_per_iteration,
                   output_storage_uri=output_storage_uri, image=image)


def cluster_serving_runtime(*, name: str, labels: dict[str, str], image: str, model_architecture: str | None,
                            gpus: int, command: list[str], protocol: str = "openAI") -> dict:
    """A cluster-scoped SGLang runtime: `command` is the whole launch line (it may use $(MODEL_PATH),
    which OME fills in); the server listens on 8080 and is ready once /health_generate answers."""
    _check_name("name", name)
    _check_strings("labels", labels)
    _check_strings("command", command)
    _check_positive("gpus", gpus)
    return _render("cluster_serving_runtime.yaml.j2", name=name, labels=labels, image=image,
                   model_architecture=model_architecture, gpus=gpus, command=command, protocol=protocol)


def to_yaml(manifest: dict) -> str:
    return yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
