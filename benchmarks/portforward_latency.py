"""What a port-forward adds to the latencies a trial measures on Kubernetes.

Without an in-cluster driver, a trial reaches its engine pod through a port-forward: a websocket
stream through the API server and the kubelet, relayed by cluster/portforward.py. TTFT and ITL
measured that way include the tunnel. This measures the difference on the real CPU engine
(llama-server + SmolLM2), directly and through the Kubernetes API emulator's port-forward
(tests/k8s_emulator.py), in turns (A B A B ...), one request at a time over one kept-alive
connection each (as genai-bench's users keep theirs), and the cost of opening a new connection.

The emulator relays in-process on the loopback: a real cluster adds network hops (driver to API
server to kubelet to pod), so its difference is at least this one, never less.

    .venv/bin/python benchmarks/portforward_latency.py [--requests 30] [--tokens 32]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package (the emulator)

from llm_autotuner.cluster import llamacpp_setup  # noqa: E402
from llm_autotuner.cluster.local import free_port  # noqa: E402
from llm_autotuner.cluster.portforward import PortForward  # noqa: E402
from llm_autotuner.cluster.procs import ProcessGroup  # noqa: E402
from tests.k8s_emulator import KubeEmulator  # noqa: E402

NS, POD = "bench", "engine-0"


def one_request(connection: http.client.HTTPConnection, tokens: int) -> tuple[float, float, float]:
    """(TTFT, mean inter-token gap, end to end) of one streamed chat completion, in seconds."""
    body = json.dumps({"model": "smollm2", "stream": True, "max_tokens": tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": "Count from one to one hundred."}]})
    began = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    arrivals = []
    for line in response:  # one server-sent event per line
        if line.startswith(b"data: ") and b'"content":"' in line:  # a token (the first chunk may hold none)
            arrivals.append(time.perf_counter())
    response.read()
    ended = time.perf_counter()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return arrivals[0] - began, (sum(gaps) / len(gaps)) if gaps else 0.0, ended - began


def connect_time(port: int) -> float:
    """Opening a connection and getting the first answer (/health)."""
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health")
    connection.getresponse().read()
    connection.close()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1")
    port = free_port()
    engine = ProcessGroup([str(llamacpp_setup.ensure_llama_server()), "--model", str(llamacpp_setup.smollm2_gguf()),
                           "--host", "127.0.0.1", "--port", str(port), "--alias", "smollm2", "--parallel", "1",
                           "--threads", "2"], log_path="/dev/null")
    try:
        deadline = time.monotonic() + 120
        while True:  # /health answers 503 while the model loads: wait for its 200
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
                raise OSError("loading")
            except OSError:
                if time.monotonic() > deadline or engine.poll() is not None:
                    raise SystemExit("llama-server did not start")
                time.sleep(0.3)
        with KubeEmulator() as emulator:
            emulator.put_pod(NS, {"metadata": {"name": POD, "namespace": NS}, "status": {"phase": "Running"}})
            emulator.set_pod_target(NS, POD, 8080, ("127.0.0.1", port))
            forward = PortForward(emulator.api_client(), NS, POD, 8080)
            try:
                paths = {"direct": port, "port-forward": forward.local_port}
                connections = {name: http.client.HTTPConnection("127.0.0.1", p, timeout=60) for name, p in paths.items()}
                for connection in connections.values():
                    one_request(connection, args.tokens)  # warm-up: the engine's and the tunnel's first use
                runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
                opens: dict[str, list[float]] = {name: [] for name in paths}
                for _ in range(args.requests):  # in turns: drift hits both alike
                    for name, connection in connections.items():
                        try:
                            runs[name].append(one_request(connection, args.tokens))
                        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                            # llama-server (cpp-httplib) closes a kept-alive connection idle for 5 s
                            # (a slow turn of the other path): reconnect, as an HTTP client pool does.
                            connection.close()
                            runs[name].append(one_request(connection, args.tokens))
                        opens[name].append(connect_time(paths[name]))
            finally:
                forward.close()
    finally:
        engine.stop(5)

    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"{args.requests} requests each, {args.tokens} tokens, in turns")
    print("| path | TTFT median | ITL median | end to end median | new connection + first answer median |")
    print("|---|---|---|---|---|")
    for name in runs:
        ttft, itl, e2e = (median(r[i] for r in runs[name]) for i in range(3))
        print(f"| {name} | {ttft * 1000:.1f} ms | {itl * 1000:.2f} ms | {e2e * 1000:.0f} ms | "
              f"{median(opens[name]) * 1000:.1f} ms |")
    direct, forwarded = runs["direct"], runs["port-forward"]
    print(f"port-forward adds: TTFT {(median(r[0] for r in forwarded) - median(r[0] for r in direct)) * 1000:+.1f} ms, "
          f"ITL {(median(r[1] for r in forwarded) - median(r[1] for r in direct)) * 1000:+.2f} ms, new connection "
          f"{(median(opens['port-forward']) - median(opens['direct'])) * 1000:+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
