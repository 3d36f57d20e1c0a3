"""The local backend against the real llama-server: ready, serve, tear down; fail fast and clearly."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from llm_autotuner.cluster.deployer import EngineSpec
from llm_autotuner.cluster.engines import LLAMA_CPP
from llm_autotuner.cluster.local import LocalDeployer, free_port
from llm_autotuner.cluster.procs import start_time
from llm_autotuner.errors import DeploymentError
from tests.conftest import engine_processes

DATA = Path(__file__).parent.parent / "data"


def spec(tmp_path, executable, model, flags):
    return EngineSpec(experiment="test", run_id="test-run", trial_id="t1", profile=LLAMA_CPP, executable=executable,
                      model_path=model, served_name=f"smol-{tmp_path.name}", flags=flags, workdir=tmp_path)


def gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if start_time(pid) is None:
            return True
        time.sleep(0.05)
    return False


def test_engine_serves_and_is_killed_on_exit(tmp_path, llama_server, smollm2):
    with LocalDeployer().deployed(spec(tmp_path, llama_server, smollm2, {"ctx-size": 1024, "parallel": 2}), 60) as endpoint:
        with urllib.request.urlopen(endpoint.url + "/v1/models", timeout=10) as response:
            served = json.load(response)
        started = engine_processes(f"smol-{tmp_path.name}")
        assert len(started) == 1
    assert f"smol-{tmp_path.name}" in json.dumps(served)
    assert gone(started.pop())
    argv = json.loads((tmp_path / "engine_argv.json").read_text())
    assert argv[argv.index("--parallel") + 1] == "2"


def test_engine_is_killed_when_the_block_raises(tmp_path, llama_server, smollm2):
    with pytest.raises(KeyboardInterrupt):
        with LocalDeployer().deployed(spec(tmp_path, llama_server, smollm2, {"ctx-size": 1024}), 60):
            started = engine_processes(f"smol-{tmp_path.name}")
            raise KeyboardInterrupt
    assert len(started) == 1 and gone(started.pop())


def test_a_rejected_flag_fails_at_once_with_the_engines_words(tmp_path, llama_server, smollm2):
    began = time.monotonic()
    with pytest.raises(DeploymentError) as caught:
        with LocalDeployer().deployed(spec(tmp_path, llama_server, smollm2, {"no-such-flag": 3}), 120):
            pass
    assert time.monotonic() - began < 30  # not the 120 s deadline
    assert "exited with code" in str(caught.value)
    assert "no-such-flag" in str(caught.value)


def held_ports(count):
    """Sockets bound and listening on loopback ports, as another program would hold them."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        held.append(sock)
    return held


def test_a_port_taken_before_the_engine_binds_it_is_replaced(tmp_path, llama_server, smollm2):
    held = held_ports(2)
    free = free_port()
    ports = iter([sock.getsockname()[1] for sock in held] + [free])
    try:
        deployer = LocalDeployer(pick_port=lambda host: next(ports))
        with deployer.deployed(spec(tmp_path, llama_server, smollm2, {"ctx-size": 1024}), 60) as endpoint:
            with urllib.request.urlopen(endpoint.url + "/health", timeout=10) as response:
                assert response.status == 200
            assert endpoint.url == f"http://127.0.0.1:{free}"
            served = engine_processes(f"smol-{tmp_path.name}")
            assert len(served) == 1
        log = (tmp_path / "engine.log").read_text()
        assert log.count("couldn't bind HTTP server socket") == 2  # both taken ports, then the free one
        assert gone(served.pop())
    finally:
        for sock in held:
            sock.close()


class _AnswersEverything(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args):
        pass


def test_a_server_answering_on_the_chosen_port_is_not_taken_for_the_engine(tmp_path, llama_server, smollm2):
    """Another program took the port and answers /health: the trial must not benchmark it."""
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnswersEverything)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    free = free_port()
    ports = iter([other.server_address[1], free])
    try:
        deployer = LocalDeployer(pick_port=lambda host: next(ports))
        with deployer.deployed(spec(tmp_path, llama_server, smollm2, {"ctx-size": 1024}), 60) as endpoint:
            assert endpoint.url == f"http://127.0.0.1:{free}"
            with urllib.request.urlopen(endpoint.url + "/v1/models", timeout=10) as response:
                assert f"smol-{tmp_path.name}" in response.read().decode()
        log = (tmp_path / "engine.log").read_text()
        assert log.count("couldn't bind HTTP server socket") == 1
    finally:
        other.shutdown()
        other.server_close()


def test_when_every_port_tried_is_taken_the_reason_says_so(tmp_path, llama_server, smollm2):
    held = held_ports(3)
    ports = iter(sock.getsockname()[1] for sock in held)
    try:
        with pytest.raises(DeploymentError) as caught:
            with LocalDeployer(pick_port=lambda host: next(ports)).deployed(
                    spec(tmp_path, llama_server, smollm2, {"ctx-size": 1024}), 60):
                pass
        first = str(caught.value).splitlines()[0]
        assert f"engine could not bind http://127.0.0.1:{held[-1].getsockname()[1]}" in first
        assert "couldn't bind HTTP server socket" in first and "3 ports tried" in first
        assert engine_processes(f"smol-{tmp_path.name}") == set()
    finally:
        for sock in held:
            sock.close()


def test_a_missing_executable_is_a_deployment_error(tmp_path, smollm2):
    with pytest.raises(DeploymentError, match="cannot start /nonexistent/llama-server"):
        LocalDeployer().deploy(spec(tmp_path, "/nonexistent/llama-server", smollm2, {}))


def test_readiness_has_a_deadline_and_the_engine_is_killed(tmp_path):
    deployer = LocalDeployer()
    script = tmp_path / "engine"
    script.write_text(f"#!{sys.executable}\nimport runpy, sys\nrunpy.run_path({str(DATA / 'fake_engine_never_ready.py')!r}, run_name='__main__')\n")
    script.chmod(0o755)
    never_ready = spec(tmp_path, str(script), "unused", {})
    deployment = deployer.deploy(never_ready)
    began = time.monotonic()
    try:
        with pytest.raises(DeploymentError, match="not ready .* before the deadline"):
            deployer.wait_ready(deployment, time.monotonic() + 2.0)
        assert 1.9 < time.monotonic() - began < 10
    finally:
        deployer.teardown(deployment)
    assert gone(deployment.group.pgid)


def test_watchdog_kills_the_engine_when_its_owner_is_sigkilled(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from llm_autotuner.cluster.procs import ProcessGroup\n"
         f"group = ProcessGroup(['sleep', '300'], log_path={str(tmp_path / 'log')!r})\n"
         "print(group.pgid, flush=True)\n"
         "time.sleep(300)\n"],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        pgid = int(owner.stdout.readline())
        assert start_time(pgid) is not None
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert gone(pgid, within_s=10)
    finally:
        owner.kill()


def test_an_engine_is_guarded_from_its_first_instant(tmp_path):
    # The owner (a trial's worker) can die at any moment, also while the engine is just starting:
    # here the engine itself SIGKILLs its owner at once. Its group must still go, with no record and
    # no sweep to find it. (The watchdog used to start just after the engine: a window of a few
    # milliseconds that this test rarely hits; the engine now names itself to its watchdog before
    # it execs, so there is no window.)
    for attempt in range(5):
        pid_file = tmp_path / f"engine-{attempt}"
        owner = subprocess.Popen(
            [sys.executable, "-c",
             "from llm_autotuner.cluster.procs import ProcessGroup\n"
             f"group = ProcessGroup(['sh', '-c', 'echo $$ > {pid_file}; kill -9 $PPID; exec sleep 300'], log_path=None)\n"
             "import time; time.sleep(300)\n"],
            cwd=os.getcwd())
        try:
            owner.wait(timeout=30)
            deadline = time.monotonic() + 10
            while not pid_file.exists() or not pid_file.read_text().endswith("\n"):
                assert time.monotonic() < deadline, "the engine never ran"
                time.sleep(0.01)
            assert gone(int(pid_file.read_text()), within_s=10), f"attempt {attempt}: the engine outlived its owner"
        finally:
            owner.kill()


def test_no_engine_starts_when_its_watchdog_cannot(tmp_path, monkeypatch):
    # Should the watchdog fail to start (a full process table, too many open files), nothing would
    # ever stop the engine. The watchdog runs as `sys.executable -m ...watchdog`; /bin/false stands
    # in for an interpreter that cannot start it.
    from llm_autotuner.cluster.procs import ProcessGroup

    before = engine_like("sleep", "4242")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(OSError, match="watchdog did not start"):
        ProcessGroup(["sleep", "4242"], log_path=str(tmp_path / "log"))
    assert engine_like("sleep", "4242") == before


def engine_like(*argv: str) -> set[int]:
    """PIDs of running processes whose command line is exactly `argv`."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]:
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def test_stop_returns_once_every_process_of_the_engine_is_gone(tmp_path):
    # SGLang and vLLM hold the GPUs in child processes. The leader here exits at once on SIGTERM; its
    # child holds 3 GiB, whose release after the SIGKILL takes a moment: the next trial given the
    # same GPUs must not find them still held. (stop() returned when the leader was reaped.)
    from llm_autotuner.cluster.procs import ProcessGroup, group_alive

    ready = tmp_path / "ready"
    child = f"b = bytearray(3 << 30); open({str(ready)!r}, 'w').close(); import time; time.sleep(300)"
    leader = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
              f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              "time.sleep(300)\n")
    group = ProcessGroup([sys.executable, "-c", leader], log_path=str(tmp_path / "log"))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists()
        assert group.stop(grace_s=5) is True
        assert not group_alive(group.pgid)
    finally:
        group.stop(grace_s=0)


# How SGLang 0.4-0.5 logs a scheduler that died at start (python/sglang/srt/managers/scheduler.py).
SGLANG_CRASH = """[2026-12-06 10:00:09 TP0] Load weight end. type=LlamaForCausalLM, avail mem=2.10 GB, mem usage=14.96 GB.
[2026-12-06 10:00:09 TP0] Scheduler hit an exception: Traceback (most recent call last):
  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", line 2315, in run_scheduler_process
    scheduler = Scheduler(server_args, port_args, gpu_id, tp_rank, dp_rank)
RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.

[2026-12-06 10:00:09] Received sigquit from a child process. It usually means the child failed.
"""


def test_an_engine_that_dies_of_an_exception_is_explained_by_the_exception(tmp_path):
    """Not by the line that announces the traceback: the exception says what to change."""
    engine = tmp_path / "engine"
    engine.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write({SGLANG_CRASH!r})\nsys.exit(1)\n")
    engine.chmod(0o755)
    with pytest.raises(DeploymentError) as caught:
        with LocalDeployer().deployed(spec(tmp_path, str(engine), "model", {}), 60):
            pass
    assert str(caught.value).splitlines()[0] == ("engine exited with code 1 before it was ready: RuntimeError: Not "
                                                 "enough memory. Please try to increase --mem-fraction-static.")
