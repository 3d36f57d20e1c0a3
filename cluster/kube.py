"""Kubernetes glue: a client from kubeconfig or the pod's service account, names, labels, errors."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from kubernetes import client, config
from kubernetes.config import kube_config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from llm_autotuner.errors import DeploymentError, InfrastructureError, SetupError, TaskError

OME_GROUP, OME_VERSION = "ome.io", "v1beta1"
REQUEST_TIMEOUT_S = 30  # every API call has a deadline
# A kubeconfig's credential plugin (aws eks get-token, gke-gcloud-auth-plugin, kubelogin) answers in
# seconds; one waiting for a login nobody does never answers, and the client waits without a
# deadline. Kept short: a Lease renewal waiting for a token may take this plus REQUEST_TIMEOUT_S.
CREDENTIAL_PLUGIN_TIMEOUT_S = 45
DEADLINE_WRAPPER = Path(__file__).with_name("credential_deadline.py")
RBAC_MANIFEST = Path(__file__).with_name("rbac.yaml")  # shipped in the wheel; `autotuner rbac` prints it
MANAGED_BY = {"app.kubernetes.io/managed-by": "autotuner"}
EXPERIMENT_LABEL, RUN_LABEL, TRIAL_LABEL = "autotuner.io/experiment", "autotuner.io/run", "autotuner.io/trial"
_NAME_MAX = 63
_INVALID = re.compile(r"[^a-z0-9-]+")


def in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """From the named kubeconfig, else the pod's service account when in a cluster, else ~/.kube/config.
    A credential plugin it names runs with a deadline, at load and whenever its token expires."""
    try:
        if kubeconfig is None and context is None and in_cluster():
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        merged = kube_config.KubeConfigMerger(kubeconfig or config.KUBE_CONFIG_DEFAULT_LOCATION).config
        if merged is None:
            raise config.ConfigException("Invalid kube-config file. No configuration found.")
        plugin = _bound_credential_plugin(merged, context)
        provider = _auth_provider(merged, context)

        def load() -> tuple[client.ApiClient, list[str]]:
            # A plugin that fails is only logged by the client, which then goes on without a token:
            # caught here, it is the one-line error it should be.
            with _ClientLog() as logged:
                if plugin:  # the rewritten copy, in memory only: never written back to the user's file
                    return config.new_client_from_config_dict(merged, context=context), logged.errors
                # as kubectl loads it (an auth-provider's refreshed tokens are saved to the file)
                return config.new_client_from_config(config_file=kubeconfig, context=context), logged.errors

        if provider is None:
            api, errors = load()
        else:
            # The client refreshes an auth-provider's token (oidc: from its identity provider, gcp:
            # a gcloud command) at load and, once it expires, inside an API call, waiting without a
            # deadline for either: both get the plugins' deadline.
            what = f"the kubeconfig's auth-provider {provider}"
            api, errors = within_deadline(load, what)
            refresh = api.configuration.refresh_api_key_hook
            if refresh is not None:
                api.configuration.refresh_api_key_hook = lambda configuration: _refresh_within_deadline(
                    refresh, configuration, what)
        if errors:
            raise InfrastructureError(f"cannot load the Kubernetes configuration: {errors[-1]}")
        return api
    except (config.ConfigException, OSError) as error:
        raise DeploymentError(f"cannot load the Kubernetes configuration: {error}") from None


def within_deadline(work: Callable[[], T], what: str) -> T:
    """`work()`'s result, if it returns within CREDENTIAL_PLUGIN_TIMEOUT_S (it runs in a daemon
    thread, left behind if it never returns); else InfrastructureError naming `what`."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as error:  # raised again in the caller's thread
            outcome.append((False, error))

    worker = threading.Thread(target=run, daemon=True, name="kube-credentials")
    worker.start()
    worker.join(CREDENTIAL_PLUGIN_TIMEOUT_S)
    if not outcome:
        raise InfrastructureError(f"{what} did not answer within {CREDENTIAL_PLUGIN_TIMEOUT_S:g} s (does it wait "
                                  "for its identity provider, or a login?)")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def _refresh_within_deadline(refresh: Callable, configuration, what: str) -> None:
    """An expired token refreshed inside an API call: past the deadline the call goes on with the
    old token, which the API refuses (401: the error says so), as with an exec plugin."""
    try:
        within_deadline(lambda: refresh(configuration), what)
    except InfrastructureError as error:
        logging.getLogger(__name__).error("%s", error)


def _user_entry(merged, context: str | None, key: str):
    """The `key` entry (exec, auth-provider) of the context's user, or None (loading reports what
    else is wrong with the file)."""
    try:
        current = context or merged["current-context"]
        user_name = next(c["context"]["user"] for c in merged["contexts"].value if c["name"] == current)
        return next(u["user"][key] for u in merged["users"].value if u["name"] == user_name).value
    except (KeyError, TypeError, AttributeError, StopIteration, config.ConfigException):
        return None


def _auth_provider(merged, context: str | None) -> str | None:
    """The name of the context's user's `auth-provider` (oidc, gcp), or None."""
    provider = _user_entry(merged, context, "auth-provider")
    return (str(provider.get("name") or "") or "(unnamed)") if isinstance(provider, dict) else None


def _bound_credential_plugin(merged, context: str | None) -> str | None:
    """Make the context's credential plugin (`exec`: aws eks get-token, gke-gcloud-auth-plugin,
    kubelogin) run under credential_deadline.py; its program's name, or None when it has none."""
    plugin = _user_entry(merged, context, "exec")
    command = plugin.get("command") if isinstance(plugin, dict) else None
    if not isinstance(command, str) or not command:
        return None  # the client says what is wrong with it
    # -I: neither the kubeconfig's folder (the plugin's working directory) nor the PYTHONPATH the
    # exec `env` may give a Python plugin reaches the wrapper's own imports.
    plugin["args"] = ["-I", str(DEADLINE_WRAPPER), str(CREDENTIAL_PLUGIN_TIMEOUT_S), command,
                      *(plugin.get("args") or [])]
    plugin["command"] = sys.executable
    return Path(command).name


class _ClientLog(logging.Filter):
    """Within `with`: the kubernetes client's own error records in this thread (it logs a failed
    credential plugin to the root logger and carries on), kept instead of printed."""

    def __enter__(self) -> "_ClientLog":
        self.errors: list[str] = []
        self.thread = threading.get_ident()
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc_info) -> None:
        logging.getLogger().removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.thread == self.thread and record.levelno >= logging.ERROR
                and f"{os.sep}kubernetes{os.sep}config{os.sep}" in record.pathname):
            self.errors.append(record.getMessage())
            return False
        return True


def check_config(kubeconfig: str | None, context: str | None) -> None:
    """The configuration a run talks to Kubernetes with loads (the named file, the named context),
    checked before the run moves the last results aside or starts anything."""
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise TaskError(f"deployment.kubeconfig: {kubeconfig} is not a file")
    try:
        api_client(kubeconfig, context)
    except DeploymentError as error:
        raise SetupError(f"deployment{'.context' if context else ''}: {error}") from None


def run_tag(run_id: str) -> str:
    """The random part of a run id (`20261202-021055-ab12` -> `ab12`): names carry it, so a resumed
    run (which keeps its trial ids) never collides with an object the killed run left."""
    return run_id.rsplit("-", 1)[-1]


def resource_name(experiment: str, trial_id: str, run_id: str = "") -> str:
    """`<experiment>-<run tag>-<trial>` as a valid Kubernetes name, <= 63 characters.

    When sanitising or shortening changed anything, or a part after the experiment holds a '-'
    (then "a-b" + "c" and "a" + "b-c" would read alike), a hash of the parts is appended, so two
    different (experiment, run, trial) never map to the same name.
    """
    tail = [run_tag(run_id), trial_id] if run_id else [trial_id]
    original = "-".join([experiment, *tail])
    name = _INVALID.sub("-", original.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name) or "t"
    if name == original and len(name) <= _NAME_MAX and not any("-" in part for part in tail):
        return name
    original = "\0".join([experiment, *tail])  # what the hash tells apart: the parts, not their joining
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    return f"{name[:_NAME_MAX - 9].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """A label value: <= 63 of [A-Za-z0-9._-], starting and ending alphanumeric."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:_NAME_MAX]
    return cleaned.strip("-._") or "x"


def labels(experiment: str, run_id: str, trial_id: str | None = None) -> dict[str, str]:
    result = MANAGED_BY | {EXPERIMENT_LABEL: label_value(experiment), RUN_LABEL: label_value(run_id)}
    if trial_id is not None:
        result[TRIAL_LABEL] = label_value(trial_id)
    return result


def passing(error: ApiException) -> bool:
    """An answer that says "not now" (throttled, the server or its etcd busy): worth asking again
    before the call's deadline, not a verdict on the config."""
    return error.status == 429 or error.status >= 500


PASSING_WAIT_S = 1.0  # before asking again an API that answered "not now" (429, 5xx) or dropped the connection
T = TypeVar("T")


def asked_again_while_busy(call: Callable[[], T]) -> T:
    """`call()`, asked again while the API answers "not now" or drops the connection, until
    REQUEST_TIMEOUT_S has gone by; then its last error is raised. Only for calls whose repeat is
    safe: a delete, a read, or a create whose caller handles the 409 of an attempt stored before."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        try:
            return call()
        except ApiException as error:
            if not passing(error) or time.monotonic() >= deadline:
                raise
        except (HTTPError, OSError):
            if time.monotonic() >= deadline:
                raise
        time.sleep(PASSING_WAIT_S)


def explain(error: ApiException, verb: str, kind: str, name: str, namespace: str | None) -> DeploymentError:
    """An API error as a trial error that says what to do."""
    where = f" in namespace {namespace}" if namespace else ""
    if error.status == 409:
        return DeploymentError(f"{kind} {name} already exists{where}: a leftover of an earlier run? "
                               "`autotuner cleanup TASK` removes the tuner's leftovers")
    said = api_message(error)
    if error.status == 403 and "admission webhook" in said:
        # A validating webhook (OME's, a policy engine's) refused this object: this config's fault.
        return DeploymentError(f"the API refused to {verb} {kind} {name}{where}: {said}")
    if error.status == 403 and "exceeded quota" in said:
        return InfrastructureError(f"cannot {verb} {kind} {name}{where}: the namespace's ResourceQuota is used up "
                                   f"({said})")
    if error.status == 403:
        return InfrastructureError(f"forbidden to {verb} {kind} {name}{where}: grant the tuner's account the "
                                   "rights in `autotuner rbac` (see README, 'Tuning on Kubernetes with OME')"
                                   + (f"; the API said: {said}" if said else ""))
    if error.status == 401:
        return InfrastructureError(f"the API did not accept the kubeconfig's credentials to {verb} {kind} {name}{where} "
                                   "(HTTP 401): does `kubectl get namespaces` with the same kubeconfig work?"
                                   + (f" The API said: {said}" if said else ""))
    if error.status == 404 and said.startswith("namespaces ") and "not found" in said:
        return InfrastructureError(f"cannot {verb} {kind} {name}: namespace {namespace} does not exist "
                                   "(deployment.namespace)")
    if error.status == 404:
        return InfrastructureError(f"cannot {verb} {kind} {name}{where}: the API answered 404 - is OME installed "
                                   f"(kubectl get crd {kind.lower()}s.ome.io) and does the namespace exist?"
                                   + (f" The API said: {said}" if said else ""))
    reason = error.reason or ""
    return DeploymentError(f"cannot {verb} {kind} {name}{where}: HTTP {error.status} {reason} {said}".strip())


def api_message(error: ApiException) -> str:
    """What the API server said (its Status message), or "" when its answer says nothing."""
    import json

    try:
        return json.loads(error.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return ""
