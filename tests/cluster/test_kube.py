"""Talking to a real cluster's API as users configure it: a kubeconfig whose credentials come from a
plugin (`exec`: aws eks get-token, gke-gcloud-auth-plugin, kubelogin), the API refusing them, a
namespace that does not exist. Against the HTTP-level API emulator, with a real plugin process."""

import base64
import contextlib
import json
import logging
import os
import socket
import sys
import textwrap
import time

import pytest
from llm_autotuner.cluster import kube
from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP
from llm_autotuner.cluster.lease import RunLease
from llm_autotuner.cluster.ome import OmeDeployer
from llm_autotuner.errors import InfrastructureError
from llm_autotuner.task import OmeDeployment
from tests.k8s_emulator import KubeEmulator

NS = "tuning"
TOKEN = "token-from-the-plugin"

# A credential plugin as the exec protocol defines it: an ExecCredential on stdout. Its calls are
# counted in a file; from call `hang_from` on it waits forever (a login nobody does).
PLUGIN = textwrap.dedent("""\
    import datetime, json, os, pathlib, sys, time
    state = pathlib.Path(sys.argv[1])
    calls = int(state.read_text() or 0) + 1 if state.exists() else 1
    state.write_text(str(calls))
    pathlib.Path(str(state) + ".pid").write_text(str(os.getpid()))
    if len(sys.argv) > 4:  # a helper it starts that keeps the plugin's stdout open, as `cmd &` in a script
        import subprocess
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        with open(str(state) + ".helper", "a") as helpers:
            helpers.write(f"{helper.pid} ")
    if calls >= int(sys.argv[2]):
        time.sleep(3600)
    # Expiring within the client's 5-minute margin: the next API call runs the plugin again.
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
    token = sys.argv[3] + str(calls) if sys.argv[3].endswith("-") else sys.argv[3]  # "t-": a new token each call
    print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                      "status": {"token": token, "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
""")


def plugin_kubeconfig(tmp_path, emulator, hang_from: int, token: str = TOKEN, helper: bool = False):
    script = tmp_path / "get-token"
    script.write_text(PLUGIN)
    state = tmp_path / "plugin-calls"
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    config = json.loads(path.read_text())
    config["users"] = [{"name": "emulator", "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": [str(script), str(state), str(hang_from), token, *["helper"] * helper],
        "interactiveMode": "Never"}}}]
    path.write_text(json.dumps(config))
    return path, state


def settings(kubeconfig=None, **overrides) -> OmeDeployment:
    return OmeDeployment(**({"backend": "ome", "namespace": NS, "model": "smollm2", "runtime": "srt-smollm2",
                            "gpu_budget": 4, "kubeconfig": str(kubeconfig) if kubeconfig else None} | overrides))


def spec(tmp_path) -> EngineSpec:
    return EngineSpec(experiment="kube-test", run_id="run1", trial_id="t0001", profile=LLAMA_CPP, executable="",
                      model_path="$(MODEL_PATH)", served_name="smollm2", flags={}, workdir=tmp_path / "t0001")


def plugin_gone(state, suffix=".pid") -> bool:
    pid = int((state.parent / (state.name + suffix)).read_text().split()[-1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie until its parent reaps it: dead all the same
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_token_from_a_credential_plugin_is_what_the_api_sees(tmp_path):
    with KubeEmulator() as emulator:
        emulator.accept_tokens(TOKEN)
        kubeconfig, _ = plugin_kubeconfig(tmp_path, emulator, hang_from=99)
        api = kube.api_client(str(kubeconfig))
        with RunLease(settings(kubeconfig), "kube-test", "run1", api=api):
            deployment = OmeDeployer(settings(kubeconfig), api=api).deploy(spec(tmp_path))
        assert [o["metadata"]["name"] for o in emulator.objects("inferenceservices", NS)] == [deployment.name]


def test_a_credential_plugin_that_never_answers_stops_within_the_deadline_and_is_killed(tmp_path, monkeypatch,
                                                                                         caplog):
    monkeypatch.setattr(kube, "CREDENTIAL_PLUGIN_TIMEOUT_S", 3)
    with KubeEmulator() as emulator:
        kubeconfig, state = plugin_kubeconfig(tmp_path, emulator, hang_from=1)
        started = time.monotonic()
        with pytest.raises(InfrastructureError, match=r"credential plugin python[\d.]* did not answer within 3 s "
                                                      r"\(does it wait for a login\?"):
            kube.api_client(str(kubeconfig))
        assert time.monotonic() - started < 15
        assert plugin_gone(state)  # when the error is raised, not later
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # said once, in the error


def test_a_plugin_that_answers_but_leaves_a_process_holding_its_output_is_not_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(kube, "CREDENTIAL_PLUGIN_TIMEOUT_S", 30)
    with KubeEmulator() as emulator:
        emulator.accept_tokens(TOKEN)
        kubeconfig, state = plugin_kubeconfig(tmp_path, emulator, hang_from=99, helper=True)
        started = time.monotonic()
        try:
            api = kube.api_client(str(kubeconfig))
            assert time.monotonic() - started < 15  # the client's pipe closed with the wrapper
            with RunLease(settings(kubeconfig), "kube-test", "run1", api=api):
                pass
        finally:
            for pid in (tmp_path / "plugin-calls.helper").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)


def test_a_hanging_plugin_is_killed_with_what_it_started(tmp_path, monkeypatch):
    monkeypatch.setattr(kube, "CREDENTIAL_PLUGIN_TIMEOUT_S", 3)
    with KubeEmulator() as emulator:
        kubeconfig, state = plugin_kubeconfig(tmp_path, emulator, hang_from=1, helper=True)
        with pytest.raises(InfrastructureError, match="did not answer within 3 s"):
            kube.api_client(str(kubeconfig))
        assert plugin_gone(state) and plugin_gone(state, ".helper")


def test_a_credential_plugin_that_hangs_when_the_token_expires_mid_run_is_killed_within_the_deadline(
        tmp_path, monkeypatch, caplog):
    """The token expires during the run: the client runs the plugin again inside an API call. A
    plugin that hangs then is killed at the deadline; the call goes on with the expired token,
    which the API refuses (401): the run stops saying so, instead of hanging."""
    monkeypatch.setattr(kube, "CREDENTIAL_PLUGIN_TIMEOUT_S", 3)
    with KubeEmulator() as emulator:
        emulator.accept_tokens("t-1", "t-2")
        kubeconfig, state = plugin_kubeconfig(tmp_path, emulator, hang_from=3, token="t-")
        api = kube.api_client(str(kubeconfig))
        assert state.read_text() == "1"
        with RunLease(settings(kubeconfig), "kube-test", "run1", api=api):  # a refresh: the plugin's second call
            assert state.read_text() == "2"
            emulator.accept_tokens("t-3")  # t-2 has expired
            started = time.monotonic()
            with pytest.raises(InfrastructureError, match=r"did not accept the kubeconfig's credentials"):
                OmeDeployer(settings(kubeconfig), api=api).deploy(spec(tmp_path))
            assert time.monotonic() - started < 15 and state.read_text() == "3"
            assert plugin_gone(state)
            assert any("did not answer within 3 s" in r.getMessage() for r in caplog.records)
        assert emulator.objects("inferenceservices", NS) == []


def oidc_kubeconfig(tmp_path, emulator, issuer: str, expires_in_s: float):
    """A kubeconfig whose user logs in with the (deprecated, still used) oidc auth-provider, its
    id-token a JWT expiring in `expires_in_s` (negative: expired, so the client refreshes it from
    the identity provider at `issuer` while loading)."""
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    id_token = ".".join([part({"alg": "none"}), part({"sub": "me", "exp": int(time.time() + expires_in_s)}), "sig"])
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    config = json.loads(path.read_text())
    config["users"] = [{"name": "emulator", "user": {"auth-provider": {"name": "oidc", "config": {
        "client-id": "tuner", "client-secret": "s", "id-token": id_token, "refresh-token": "r",
        "idp-issuer-url": issuer}}}}]
    path.write_text(json.dumps(config))
    return path, id_token


def test_an_oidc_login_whose_identity_provider_never_answers_stops_within_the_deadline(tmp_path, monkeypatch):
    """The client refreshes an expired oidc token from the identity provider with no timeout: a
    provider that takes the connection and never answers would hang the run at its first API use."""
    monkeypatch.setattr(kube, "CREDENTIAL_PLUGIN_TIMEOUT_S", 3)
    with socket.socket() as silent, KubeEmulator() as emulator:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections are taken (the backlog), never answered
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        kubeconfig, _ = oidc_kubeconfig(tmp_path, emulator, issuer, expires_in_s=-3600)
        started = time.monotonic()
        with pytest.raises(InfrastructureError, match=r"^the kubeconfig's auth-provider oidc did not answer within "
                                                      r"3 s \(does it wait for its identity provider"):
            kube.api_client(str(kubeconfig))
        assert time.monotonic() - started < 15
        # A token still valid needs no provider: loaded and used as before.
        kubeconfig, id_token = oidc_kubeconfig(tmp_path, emulator, issuer, expires_in_s=3600)
        emulator.accept_tokens(id_token)
        with RunLease(settings(kubeconfig), "kube-test", "run1", api=kube.api_client(str(kubeconfig))):
            assert [lease["metadata"]["name"] for lease in emulator.objects("leases", NS)]


def test_credentials_the_api_refuses_stop_the_run_saying_so(tmp_path):
    with KubeEmulator() as emulator:
        emulator.accept_tokens("the-right-one")
        kubeconfig, _ = plugin_kubeconfig(tmp_path, emulator, hang_from=99, token="a-stale-one")
        with pytest.raises(InfrastructureError, match=r"did not accept the kubeconfig's credentials .*\(HTTP 401\)"):
            with RunLease(settings(kubeconfig), "kube-test", "run1"):
                pass


def test_a_namespace_that_does_not_exist_is_named(tmp_path):
    with KubeEmulator() as emulator:
        emulator.remove_namespace("tunning")
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        with pytest.raises(InfrastructureError, match=r"namespace tunning does not exist \(deployment.namespace\)"):
            with RunLease(settings(kubeconfig, namespace="tunning"), "kube-test", "run1"):
                pass
        assert emulator.objects("leases", "tunning") == []


def test_validate_and_run_refuse_a_kubeconfig_whose_plugin_never_answers_in_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    from llm_autotuner.tuner import cli

    monkeypatch.setattr(kube, "CREDENTIAL_PLUGIN_TIMEOUT_S", 2)
    with KubeEmulator() as emulator:
        kubeconfig, state = plugin_kubeconfig(tmp_path, emulator, hang_from=1)
    task = {"name": "plugin", "model": {"name": "org/model", "tokenizer": "org/model"}, "engine": {"name": "sglang"},
            "deployment": {"backend": "ome", "namespace": NS, "model": "m", "runtime": "r", "gpu_budget": 2,
                           "kubeconfig": str(kubeconfig)},
            "search_space": {"tp-size": [1, 2]}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "run"):
        assert cli.main([command, "task.yaml"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did not answer within 2 s" in err, err
        assert plugin_gone(state)
    assert not (tmp_path / "results").exists()
