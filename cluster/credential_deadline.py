"""Runs a kubeconfig's credential plugin with a deadline: the kubernetes client runs it (at load,
and again whenever its token expires, inside an API call) and waits for it without one, so a
plugin waiting for a login nobody does would hang the run. cluster/kube.py puts this in front of it:

    python -I credential_deadline.py SECONDS COMMAND [ARG...]

The plugin gets this process's stdin and environment (KUBERNETES_EXEC_INFO, the exec `env`); its
stdout and stderr are relayed (stderr as it comes: a prompt), so the client reads the plugin's
answer and exit code as before, but its pipes close when this exits, even if something the plugin
started still holds the plugin's copies. Past the deadline the plugin is killed with what it
started, and this exits 1 saying so on stderr, which the client puts in its error.
"""

import subprocess
import sys
import threading
from pathlib import Path

import psutil

DRAIN_S = 1.0  # after the plugin exited, for the rest of what it wrote


def main(argv: list[str]) -> int:
    seconds, command = float(argv[0]), argv[1:]
    name = Path(command[0]).name
    try:
        plugin = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as error:
        print(f"its credential plugin {name} cannot be started: {error.strerror}", file=sys.stderr)
        return 1
    answer: list[bytes] = []
    relays = [threading.Thread(target=_relay, args=(plugin.stdout, answer.append), daemon=True),
              threading.Thread(target=_relay, args=(plugin.stderr, _to_stderr), daemon=True)]
    for relay in relays:
        relay.start()
    try:
        code = plugin.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        # Its own process group is not an option: a plugin asking on the terminal must stay in
        # the foreground group. Its descendants are found before it dies (then they are orphans).
        try:
            started = psutil.Process(plugin.pid).children(recursive=True)
        except psutil.Error:
            started = []
        for process in [plugin, *started]:
            try:
                process.kill()
            except (psutil.Error, OSError):
                pass
        plugin.wait()
        print(f"its credential plugin {name} did not answer within {seconds:g} s (does it wait for a login? run "
              "`kubectl get namespaces` with the same kubeconfig once)", file=sys.stderr)
        return 1
    for relay in relays:
        relay.join(DRAIN_S)
    sys.stdout.buffer.write(b"".join(answer))
    sys.stdout.buffer.flush()
    return code


def _relay(stream, write) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        write(chunk)


def _to_stderr(chunk: bytes) -> None:
    sys.stderr.buffer.write(chunk)
    sys.stderr.buffer.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
