"""Runs a kubeconfig's credential plugin with a deadline: the kubernetes client runs it (at load,
and again whenever its token expires, inside an API call) and waits for it without one, so a
plugin waiting for a login nobody does would hang the run. cluster/kube.py puts this in front of it:

    python -m llm_autotuner.cluster.credential_deadline SECONDS COMMAND [ARG...]

The plugin gets this process's stdin, stdout, stderr and environment (KUBERNETES_EXEC_INFO), so
its answer and exit code are the client's as before. Past the deadline it is killed with every
process it started (one holding stdout open would keep the client waiting) and this exits 1,
saying so on stderr, which the client puts in its error.
"""

import subprocess
import sys
from pathlib import Path

import psutil


def main(argv: list[str]) -> int:
    seconds, command = float(argv[0]), argv[1:]
    name = Path(command[0]).name
    try:
        plugin = subprocess.Popen(command)
    except OSError as error:
        print(f"its credential plugin {name} cannot be started: {error.strerror}", file=sys.stderr)
        return 1
    try:
        return plugin.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        # Its own process group is not an option: a plugin asking on the terminal must stay in
        # the foreground group. Its descendants are found before it dies (then they are orphans).
        try:
            started = psutil.Process(plugin.pid).children(recursive=True)
        except psutil.Error:
            started = []
        plugin.kill()
        for process in started:
            try:
                process.kill()
            except psutil.Error:
                pass
        plugin.wait()
        print(f"its credential plugin {name} did not answer within {seconds:g} s (does it wait for a login? run "
              "`kubectl get namespaces` with the same kubeconfig once)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
