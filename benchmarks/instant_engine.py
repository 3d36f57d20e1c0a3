#!/usr/bin/env python3
"""An engine that answers at once: llama-server's command line, /health, /completion and a
streamed /v1/chat/completions whose tokens come after one short sleep (the first, then the others
5 ms later). With it, a trial's time is the
tuner's own (Ray, the trial's actor, genai-bench, the teardown), not an engine's: what the
parallel-efficiency and driver-scale benchmarks measure.

    instant_engine.py --host H --port P [--alias NAME] [any other llama-server flag VALUE]...
    (env: INSTANT_ENGINE_DELAY_S, default 0.02: the sleep before each answer;
     INSTANT_ENGINE_CHECK_DELAY_S, default 0: the sleep before answering the setup's /completion;
     INSTANT_ENGINE_SLOTS=1: at most --parallel answers at once (default 4), the others wait, as
     in llama-server's slots: then configs differ as a tuner's tests need them to;
     INSTANT_ENGINE_ANSWER: "stream" (default) as above, "one-token" every answer a single token,
     "together" all of an answer's tokens in one piece (as a stalled client reads them), "error"
     every chat request answered 500: the answers genai-bench has no statistic of)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DELAY_S = float(os.environ.get("INSTANT_ENGINE_DELAY_S", "0.02"))
CHECK_DELAY_S = float(os.environ.get("INSTANT_ENGINE_CHECK_DELAY_S", "0"))  # before answering the setup's check
TOKEN_GAP_S = 0.005  # between the first token and the others
SLOTS = os.environ.get("INSTANT_ENGINE_SLOTS") == "1"
ANSWER = os.environ.get("INSTANT_ENGINE_ANSWER", "stream")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: one line per request would be the main cost
        pass

    def do_GET(self) -> None:
        body = b'{"status":"ok"}' if self.path == "/health" else b"{}"
        self._reply(200 if self.path == "/health" else 404, body, "application/json")

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/completion":  # llama-server's own API: the setup proves a binary with it
            time.sleep(CHECK_DELAY_S)
            tokens = int(request.get("n_predict") or 1)
            body = json.dumps({"content": " x" * tokens, "tokens_predicted": tokens})
            return self._reply(200, body.encode(), "application/json")
        if ANSWER == "error":
            return self._reply(500, b'{"error":{"message":"stand-in failure","code":500}}', "application/json")
        tokens = 1 if ANSWER == "one-token" else int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        with self.server.slots:
            time.sleep(DELAY_S)
        chunks = [{"choices": [{"index": 0, "delta": {"content": " x"}, "finish_reason": None}]}] * (tokens - 1)
        chunks.append({"choices": [{"index": 0, "delta": {"content": " x"}, "finish_reason": "length"}]})
        chunks.append({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": tokens,
                                                "total_tokens": prompt + tokens}})
        events = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks] + [b"data: [DONE]\n\n"]
        # Streamed as a real engine streams (chunked), the first token alone and the rest a moment
        # later: a client that times tokens (genai-bench's TPOT) needs them after the first.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        parts = [b"".join(events)] if ANSWER == "together" else [events[0], b"".join(events[1:])]
        for part in parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
            time.sleep(TOKEN_GAP_S)
        self.wfile.write(b"0\r\n\r\n")

    def _reply(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def launcher(path: Path, delay_s: float = DELAY_S, slots: bool = False, answer: str = "stream") -> Path:
    """Write an executable at `path` that runs this engine (to be given as `engine.binary`), with
    its sleep, slots and kind of answer baked in (the environment may still override them)."""
    env = {"INSTANT_ENGINE_DELAY_S": str(delay_s), "INSTANT_ENGINE_SLOTS": "1" if slots else "0",
           "INSTANT_ENGINE_ANSWER": answer}
    path.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    f"for key, value in {env!r}.items():\n    os.environ.setdefault(key, value)\n"
                    f"os.execv(sys.executable, [sys.executable, {str(Path(__file__).resolve())!r}, *sys.argv[1:]])\n")
    path.chmod(0o755)
    return path


def main() -> int:
    args = sys.argv[1:]
    flags = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    server = ThreadingHTTPServer((flags.get("--host", "127.0.0.1"), int(flags["--port"])), Handler)
    server.daemon_threads = True
    # Without slots, as many at once as ask.
    server.slots = threading.BoundedSemaphore(int(flags.get("--parallel", 4))) if SLOTS else contextlib.nullcontext()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
