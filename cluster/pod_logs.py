"""An InferenceService's engine log, kept in the trial's engine.log as a local engine's is.

Its pods, and their logs with them, go when the InferenceService is deleted, so what the trial
needs is read while they are there: at Ready, the start-up (where the engine says what it chose
for the flags left to it: the winner's pinned values, tuner/results.py); when a container crashed
or restarted, the end of its run before (where it says why); at the teardown, before the delete,
the whole log (what the engine said while it was benchmarked: its batches, its warnings). A log
is never worth a trial: the API not answering, or having none to give yet, leaves a line saying so.
"""

from __future__ import annotations

import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from llm_autotuner.cluster import kube
from llm_autotuner.cluster.procs import telling_line

LOG_LIMIT_BYTES = 4 << 20  # of a start-up: SGLang's and vLLM's take some kilobytes
CRASH_TAIL_LINES = 200  # the end of a crashed run: its traceback and what led to it
LOG_END_LINES = 2000  # the end of a log over the limit, kept with its first part
READ_TIMEOUT_S = 5  # one read of a log; the client asks up to 4 times: at most 20 s, a few reads a trial


def containers(pod: client.V1Pod) -> list[str]:
    return [container.name for container in (pod.spec.containers if pod.spec else None) or []]


def read(core: client.CoreV1Api, pod: client.V1Pod, container: str, previous: bool = False,
         deadline: float | None = None) -> tuple[str, str | None]:
    """(the log, None), or ("", why there is none): the container has not started, has not
    restarted (`previous`), the pod is gone, the API is busy or does not answer. A log over the
    limit keeps its first part (the start-up) and, read before `deadline` (time.monotonic()), its
    end (where a run that went wrong says so)."""
    size = {"previous": True, "tail_lines": CRASH_TAIL_LINES} if previous else {"limit_bytes": LOG_LIMIT_BYTES}
    try:
        data = _get(core, pod, container, **size)
    except (ApiException, HTTPError, OSError) as error:
        return "", _why(error)
    # Raw bytes: an engine may log bytes that are not UTF-8, which the client's own decoding refuses.
    text = data.decode(errors="replace")
    if not previous and len(data) >= LOG_LIMIT_BYTES:
        cut = f"\n(cut here: the log is longer than {LOG_LIMIT_BYTES >> 20} MiB; its first {LOG_LIMIT_BYTES >> 20} MiB "
        if deadline is not None and time.monotonic() >= deadline:
            return text + cut + "are kept; its end was not read: the teardown's time for reading logs was up)\n", None
        try:
            # The API gives a log's first bytes or its last lines, not its size: the two parts
            # may share lines when the log is only a little longer than the limit. The end is
            # bounded too (a progress bar redrawn with \r is one line however long).
            end = _get(core, pod, container, tail_lines=LOG_END_LINES, limit_bytes=LOG_LIMIT_BYTES)
            text += (cut + f"are above, its last {LOG_END_LINES} lines below, which may repeat lines above)\n"
                     + end.decode(errors="replace"))
            if len(end) >= LOG_LIMIT_BYTES:
                text += f"\n(cut here: those lines are over {LOG_LIMIT_BYTES >> 20} MiB; their first part is kept)\n"
        except (ApiException, HTTPError, OSError) as error:
            text += cut + f"are kept; its end was not read: {_why(error)})\n"
    return text, None


def _get(core: client.CoreV1Api, pod: client.V1Pod, container: str, **size) -> bytes:
    response = core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace, container=container,
                                            _preload_content=False, _request_timeout=READ_TIMEOUT_S, **size)
    try:
        return response.data
    finally:
        response.release_conn()


def _why(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"the API answered {error.status}: {kube.api_message(error) or error.reason}"
    return f"no answer from the API ({type(error).__name__})"


def keep_start_up(core: client.CoreV1Api, pods: list[client.V1Pod], log_path: Path) -> None:
    """Each engine container's log so far into `log_path` (replaced)."""
    log_path.write_text("".join(_section(pod, name, *read(core, pod, name))
                                for pod in pods for name in containers(pod)))


def keep_whole(core: client.CoreV1Api, pods: list[client.V1Pod] | None, log_path: Path, deadline: float) -> None:
    """Each engine container's whole log into `log_path`, in place of the start-up kept there; when
    a read fails or `deadline` (time.monotonic()) has passed, the start-up stays, and a line says
    why the rest is missing."""
    def not_read(why: str) -> None:
        with log_path.open("a") as log:
            log.write(f"(the log after the start-up was not read: {why})\n")

    if pods is None:
        return not_read("the API did not list the engine pods")
    sections = []
    for pod in pods:
        for name in containers(pod):
            text, missing = (read(core, pod, name, deadline=deadline) if time.monotonic() < deadline
                             else ("", "the teardown's time for reading logs was up"))
            if missing:
                return not_read(missing)
            sections.append(_section(pod, name, text, None))
    if sections:
        log_path.write_text("".join(sections))


def keep_crash(core: client.CoreV1Api, pod: client.V1Pod, log_path: Path) -> str | None:
    """The end of each of `pod`'s restarted containers' run before, appended to `log_path`; the
    line of it that most likely says why it ended (None when there is no such log)."""
    told = None
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if not (status.last_state and status.last_state.terminated):
            continue
        text, missing = read(core, pod, status.name, previous=True)
        with log_path.open("a") as log:
            log.write(_section(pod, status.name, text, missing,
                               f"its run before the restart, last {CRASH_TAIL_LINES} lines"))
        if text.strip() and told is None:
            told = telling_line(text)
    return told


def _section(pod: client.V1Pod, container: str, text: str, missing: str | None, which: str = "") -> str:
    heading = f"==> pod {pod.metadata.name}, container {container}{', ' + which if which else ''} <==\n"
    body = text if not missing else f"(no log: {missing})\n"
    return heading + body + ("" if body.endswith("\n") else "\n")

