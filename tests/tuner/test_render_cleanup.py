"""`autotuner render` writes valid manifests without a cluster; `autotuner cleanup` removes leftovers."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_autotuner.cluster.procs import start_time
from llm_autotuner.cluster import records
from llm_autotuner.cluster.records import EngineRecord, engine_records
from tests.cluster.test_manifests import validate


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llm_autotuner.tuner.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_render_ome_example_writes_valid_unique_manifests_with_the_trials_flags(tmp_path):
    result = cli("render", "examples/ome-sglang.yaml", "--trials", "25", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    manifests = [yaml.safe_load(p.read_text()) for p in sorted(tmp_path.glob("trial-*-inferenceservice.yaml"))]
    assert len(manifests) == 25
    names = {m["metadata"]["name"] for m in manifests}
    assert len(names) == 25
    for manifest in manifests:
        validate(manifest)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
        assert len(manifest["metadata"]["name"]) <= 63
        runner = manifest["spec"]["engine"]["runner"]
        args = runner["args"]
        for flag in ("--tp-size", "--mem-fraction-static", "--chunked-prefill-size", "--max-running-requests",
                     "--schedule-policy"):
            assert flag in args
        tp = int(args[args.index("--tp-size") + 1])
        assert runner["resources"]["limits"]["nvidia.com/gpu"] == tp
        assert manifest["spec"]["engine"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_render_benchmarkjob_example(tmp_path):
    result = cli("render", "examples/ome-sglang-benchmarkjob.yaml", "--trials", "3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    jobs = [yaml.safe_load(p.read_text()) for p in sorted(tmp_path.glob("trial-*-benchmarkjob.yaml"))]
    assert len(jobs) == 3
    for job in jobs:
        validate(job)
        endpoint = job["spec"]["endpoint"]["endpoint"]
        assert endpoint["url"].endswith(".llm-tuning.svc.cluster.local:8080")
        assert endpoint["modelName"] == "meta-llama/Llama-3.1-8B-Instruct"
        assert job["spec"]["numConcurrency"] == [16, 64]
        assert job["spec"]["outputLocation"]["storageUri"].startswith("pvc://autotuner-results/benchmarks/render/")


def test_render_local_example_writes_launch_lines(tmp_path):
    result = cli("render", "examples/quickstart-cpu.yaml", "--trials", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    launch = json.loads((tmp_path / "trial-1-launch.json").read_text())
    assert launch["argv"][0].endswith("llama-server") and "--parallel" in launch["argv"]
    # A line that starts the engine here: the built-in model is named by its file, not "builtin:".
    assert Path(launch["argv"][launch["argv"].index("--model") + 1]).is_file()


def test_render_names_each_trials_ray_claim_engine_and_load_generator_together(tmp_path):
    result = cli("render", "examples/quickstart-cpu.yaml", "--trials", "6", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert len(claims) == 6
    for number in range(1, 7):
        argv = json.loads((tmp_path / f"trial-{number}-launch.json").read_text())["argv"]
        threads = int(argv[argv.index("--threads") + 1])
        # the engine's threads plus genai-bench's client_cpus (1), as a trial holds them in Ray
        assert claims[f"trial-{number}"] == {"CPU": min(threads + 1, os.cpu_count())}


def test_render_ome_claims_are_the_trials_gpus_and_genai_bench_cpu(tmp_path):
    result = cli("render", "examples/ome-sglang.yaml", "--trials", "4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    claims = json.loads((tmp_path / "claims.json").read_text())
    for number in range(1, 5):
        args = yaml.safe_load((tmp_path / f"trial-{number}-inferenceservice.yaml").read_text())[
            "spec"]["engine"]["runner"]["args"]
        tp = int(args[args.index("--tp-size") + 1])
        assert claims[f"trial-{number}"] == {"CPU": 1.0, "ome_gpu": tp}


def _task_file(tmp_path, example, change):
    task = yaml.safe_load(open(example))
    change(task)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


def test_render_refuses_what_validate_refuses_and_writes_nothing(tmp_path):
    """A dry run that writes a launch line or manifest a run would refuse tells the user it would deploy."""
    misspelled = _task_file(tmp_path, "examples/quickstart-cpu.yaml",
                            lambda task: task["search_space"].update({"paralel": [2, 4]}))
    out = tmp_path / "out"
    for command in ("validate", "render"):
        result = cli(command, misspelled, *(["--out", str(out)] if command == "render" else []))
        assert result.returncode == 2, result
        assert result.stderr.strip().splitlines() == [  # naming the file, as a loop over several needs
            f"autotuner: error: {misspelled}: search_space.paralel: llama.cpp has no --paralel (its --help); "
            "did you mean --parallel?"]
    assert not out.exists()


def test_render_renders_each_config_of_a_small_space_once(tmp_path):
    def two(task):
        task["search_space"] = {"threads": [1, 2]}
    result = cli("render", _task_file(tmp_path, "examples/quickstart-cpu.yaml", two), "--trials", "4",
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "the space holds 2 configs the engine runs differently: 2 sampled, not 4" in result.stderr
    lines = {json.loads((tmp_path / "out" / f"trial-{n}-launch.json").read_text())["command"] for n in (1, 2)}
    assert {line.split("--threads ")[1].split()[0] for line in lines} == {"1", "2"}
    assert not (tmp_path / "out" / "trial-3-launch.json").exists()


def test_render_finds_every_config_where_the_engine_runs_most_of_the_space_alike(tmp_path):
    # ubatch above the batch runs as the batch: 16384 values, 16 configs, the 16th rarely sampled.
    def folded(task):
        task["engine"]["args"]["batch-size"] = 16
        task["search_space"] = {"ubatch-size": {"type": "int", "min": 1, "max": 16384}}
    result = cli("render", _task_file(tmp_path, "examples/quickstart-cpu.yaml", folded), "--trials", "16",
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads((tmp_path / "out" / f"trial-{n}-launch.json").read_text())["command"] for n in range(1, 17)]
    assert sorted(int(line.split("--ubatch-size ")[1].split()[0]) for line in lines) == list(range(1, 17))


def test_render_leaves_out_a_config_over_the_gpu_budget_and_says_why(tmp_path):
    def wide(task):
        task["search_space"]["tp-size"] = [1, 16]  # 16 GPUs: the budget is 8
    result = cli("render", _task_file(tmp_path, "examples/ome-sglang.yaml", wide), "--trials", "30",
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    claims = json.loads((tmp_path / "out" / "claims.json").read_text())
    over = {name for name, claim in claims.items() if claim["ome_gpu"] > 8}
    assert over and len(over) < 30  # both kinds sampled
    for name in claims:
        assert (tmp_path / "out" / f"{name}-inferenceservice.yaml").exists() == (name not in over)
    said, *notes = result.stderr.strip().splitlines()  # validate's, then render's
    assert said.endswith("task.yaml: note: search_space: some configs are skipped as infeasible, not deployed: one "
                         "needs 16 ome_gpu where the deployment offers 8")
    assert len(notes) == len(over)
    for note in notes:
        assert re.fullmatch(r"trial \d+ \(.*tp-size=16.*\) is not rendered: it needs 16 ome_gpu where the deployment "
                            r"offers 8 \(a run skips it\)", note), note



def test_render_leaves_out_a_config_whose_flags_the_engine_refuses_together(tmp_path):
    def paged(task):
        task["search_space"]["page-size"] = [16, 48]  # 48 divides none of the chunk sizes
    result = cli("render", _task_file(tmp_path, "examples/ome-sglang.yaml", paged), "--trials", "20",
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    first, *skipped = result.stderr.strip().splitlines()
    assert first.endswith("note: search_space: some configs are skipped as infeasible, not deployed: one sets "
                          "--chunked-prefill-size 2048, not a multiple of --page-size 48, which SGLang refuses at "
                          "start")
    assert 0 < len(skipped) < 20  # both kinds sampled
    for note in skipped:
        assert re.fullmatch(r"trial \d+ \(.*page-size=48.*\) is not rendered: it sets --chunked-prefill-size \d+, "
                            r"not a multiple of --page-size 48, which SGLang refuses at start \(a run skips it\)", note)
        number = note.split()[1]
        assert not (tmp_path / "out" / f"trial-{number}-inferenceservice.yaml").exists()
    assert len(list((tmp_path / "out").glob("*-inferenceservice.yaml"))) == 20 - len(skipped)

def test_render_again_into_a_folder_replaces_the_earlier_render(tmp_path):
    """`kubectl apply -f DIR` applies every file there: an earlier render's must not stay among them."""
    out = tmp_path / "out"
    assert cli("render", "examples/ome-sglang-benchmarkjob.yaml", "--trials", "3", "--out", str(out)).returncode == 0
    (out / "notes.txt").write_text("the user's own file")
    result = cli("render", "examples/ome-sglang.yaml", "--trials", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["claims.json", "notes.txt", "trial-1-inferenceservice.yaml"]
    assert "removed 5 an earlier render wrote there" in result.stdout
    assert "name: llama-3-1-8b-sglang-render-trial1\n" in (out / "trial-1-inferenceservice.yaml").read_text()


def test_render_serves_the_model_under_the_name_a_run_gives_it(tmp_path):
    """The task's model.name, else the model file's name (a run's: best_command.txt), not a placeholder."""
    unnamed = _task_file(tmp_path, "examples/quickstart-cpu.yaml", lambda task: task["model"].pop("name"))
    for task, out, served in (("examples/quickstart-cpu.yaml", tmp_path / "named", "smollm2-135m"),
                              (unnamed, tmp_path / "unnamed", "SmolLM2-135M-Instruct.Q4_1")):
        result = cli("render", task, "--trials", "1", "--out", str(out))
        assert result.returncode == 0, result.stderr
        argv = json.loads((out / "trial-1-launch.json").read_text())["argv"]
        assert argv[argv.index("--alias") + 1] == served


def test_rbac_for_a_task_grants_in_its_namespace_what_it_uses(tmp_path):
    """`autotuner rbac TASK | kubectl apply -f -`: nothing to edit by hand first."""
    path = _task_file(tmp_path, "examples/ome-sglang.yaml", lambda task: task["deployment"].update(namespace="team-a"))
    result = cli("rbac", path)
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Role", "RoleBinding"]  # no runtime to create
    assert {d["metadata"]["namespace"] for d in documents} == {"team-a"}
    assert documents[2]["subjects"] == [{"kind": "ServiceAccount", "name": "autotuner", "namespace": "team-a"}]
    # endpoint: auto, from outside the cluster: a port-forward to each engine
    assert {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]} in documents[1]["rules"]
    # Every right the tuner may use, in a namespace given by name.
    documents = list(yaml.safe_load_all(cli("rbac", "--namespace", "team-b").stdout))
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                              "ClusterRoleBinding"]
    assert documents[4]["metadata"]["name"] == "autotuner-runtime-team-b"
    assert "llm-tuning" not in yaml.safe_dump_all(documents)
    local = cli("rbac", "examples/quickstart-cpu.yaml")
    assert (local.returncode, local.stderr) == (2, "autotuner: error: rbac: examples/quickstart-cpu.yaml runs its "
                                                   "engines on this machine: it needs no Kubernetes rights\n")


def test_render_with_create_runtime_writes_a_valid_runtime(tmp_path):
    task = yaml.safe_load(open("examples/ome-sglang.yaml"))
    task["deployment"]["create_runtime"] = {"image": "lmsysorg/sglang:v0.5.5", "model_architecture": "LlamaForCausalLM"}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    assert cli("render", str(path), "--trials", "1", "--out", str(tmp_path / "out")).returncode == 0
    runtime = yaml.safe_load((tmp_path / "out" / "cluster-serving-runtime.yaml").read_text())
    validate(runtime)
    assert runtime["metadata"]["name"] == "srt-llama-3-1-8b-instruct"
    assert "meta-llama/Llama-3.1-8B-Instruct" in runtime["spec"]["engineConfig"]["runner"]["command"]


def test_cleanup_kills_engines_of_dead_runs_only(tmp_path, monkeypatch):
    env = os.environ | {"XDG_STATE_HOME": str(tmp_path)}
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        EngineRecord("dead-run", "quickstart-cpu", "t1", leftover.pid, start_time(leftover.pid), "sleep").save()
        # A record whose PID was reused by another process must not kill it.
        EngineRecord("dead-run", "quickstart-cpu", "t2", os.getpid(), 12345, "llama-server").save()
        result = cli("cleanup", "examples/quickstart-cpu.yaml", env=env)
        assert result.returncode == 0, result.stderr
        assert f"removed engine process group {leftover.pid} (quickstart-cpu, trial t1)" in result.stdout
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert engine_records() == []
        assert cli("cleanup", "--all", env=env).stdout.strip() == "nothing to clean up"
    finally:
        leftover.kill()


def test_cleanup_leaves_engines_of_other_hosts_and_runs_judged_elsewhere(tmp_path, monkeypatch):
    # Nodes of a Ray cluster may share a home: a PID means something only on its own host, and a run
    # whose driver is on another host cannot be judged dead here.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    here = records.host_id()
    elsewhere = EngineRecord("dead-run", "quickstart-cpu", "t1", os.getpid(), start_time(os.getpid()), "sleep",
                             host="other-node/boot", run_host=here)
    driven_elsewhere = EngineRecord("remote-run", "quickstart-cpu", "t2", os.getpid(), start_time(os.getpid()),
                                    "sleep", host=here, run_host="other-node/boot")
    for record in (elsewhere, driven_elsewhere):
        record.save()
    assert records.kill_leftover_engines("quickstart-cpu") == []
    assert records.kill_run_engines("dead-run", wait_s=0) == []
    assert sorted(engine_records(), key=lambda r: r.trial_id) == [elsewhere, driven_elsewhere]


def test_cleanup_needs_a_task_or_all():
    result = cli("cleanup")
    assert result.returncode == 2
    assert "name a TASK, or pass --all" in result.stderr


def test_the_end_of_run_sweep_masks_the_api_key_even_when_the_cluster_does_not_answer(tmp_path, monkeypatch, capsys):
    # genai-bench writes the key into its files; a trial whose worker was killed could not mask
    # them, so the sweep does, before it talks to a Kubernetes API that may be gone.
    from llm_autotuner.cluster.backend import backend_for
    from llm_autotuner.cluster.storage import storage_for
    from llm_autotuner.task import parse_task
    from llm_autotuner.trainables.trial import Resolved
    from llm_autotuner.tuner.driver import sweep

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket closes
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "gone", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    task = parse_task({"name": "swept", "model": {"name": "org/m", "tokenizer": "org/m"}, "engine": {"name": "sglang"},
                       "deployment": {"backend": "ome", "namespace": "ns", "model": "m", "runtime": "r",
                                      "gpu_budget": 1, "kubeconfig": str(kubeconfig)},
                       "search_space": {"tp-size": [1]}, "results_dir": str(tmp_path / "results")})
    monkeypatch.setenv("AUTOTUNER_API_KEY", "sk-live-123456")
    storage = storage_for(task)
    log = Path(storage.path("trials")) / "t1" / "genai-bench.log"
    log.parent.mkdir(parents=True)
    log.write_text("api_key=sk-live-123456\n")
    resolved = Resolved("", "", "org/m", "org/m", storage, "20261204-000000-ab12")
    sweep(task, backend_for(task.deployment), resolved)
    assert log.read_text() == "api_key=***\n"
    # The API that does not answer is a warning, not the run's outcome (which it would hide).
    assert "[autotuner] warning: removing engines failed: " in capsys.readouterr().out
