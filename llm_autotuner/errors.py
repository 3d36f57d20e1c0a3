"""The project's exceptions: one root, subclasses named by what the user should do next; and how
to tell a failure of the infrastructure (a lost Ray worker) from a config's."""

import logging
from pathlib import Path


class AutotunerError(Exception):
    """Root of every error this tool raises on purpose."""


class TaskError(AutotunerError):
    """The task file is wrong. The message is one line naming the field; the CLI exits 2."""


class DeploymentError(AutotunerError):
    """An engine could not be started or did not become ready; the trial fails with this reason."""


class InfrastructureError(DeploymentError):
    """The platform refused or lacks what every trial needs (Kubernetes answered 403 or 404): not
    this config's fault, so it is not fed to the searcher; the run stops naming the cause."""


class BenchmarkError(AutotunerError):
    """The load generator failed; the trial fails with this reason."""


class SetupError(AutotunerError):
    """Something every trial needs (the engine binary, the model, the tokenizer) is missing, broken or
    could not be prepared: no config can avoid it, so the run stops before (or at) its first trial.
    The CLI exits 2."""


def lost_worker(error: BaseException | None) -> str | None:
    """Why Ray lost a trial's worker (its process or its node died), or None if the trial failed
    otherwise. Such a failure is the infrastructure's, not the config's: the trial is run again
    once, and never scored."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(error, RayTaskError):
        error = error.as_instanceof_cause()
    if not isinstance(error, RayActorError):
        return None
    text = str(error)
    cause = "its node died" if "node has died" in text or "NodeDied" in type(error).__name__ else \
        "its worker process died"
    ip = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("ip:")), None)
    return f"Ray lost the trial's worker: {cause}" + (f" (node {ip})" if ip else "")


def trial_error(trial) -> BaseException | None:
    """The error Ray recorded for a (live) Tune trial. Ray writes it into the trial's local folder
    at once but reads it back from the run's storage, which lags by a sync: read it locally."""
    import cloudpickle

    name = trial.run_metadata.pickled_error_filename
    local = Path(trial.local_path or "", name or "")
    if name and local.is_file():
        try:
            return cloudpickle.loads(local.read_bytes())
        except Exception:  # a broken pickle: fall back to Ray's own reading
            pass
    return trial.get_pickled_error() or trial.get_error()


class QuietLostWorkers(logging.Filter):
    """Drops Ray Tune's traceback for a trial whose worker was lost: the progress line names the
    cause and Ray runs the trial again; other trial errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith("Trial task failed") and lost_worker(error))


class BriefSyncFailures(logging.Filter):
    """Ray Tune's failed copy of the experiment state to the run's storage, in one line instead of
    a traceback. Seen when Ray copies its folder while it replaces a file in it (the searcher's
    state, at a Ctrl-C): the copy is retried at Ray's next save; the trials' results are not in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and record.getMessage().startswith("Saving experiment state to storage"):
            record.msg, record.args = f"{record.getMessage().rstrip(': ')}: {type(error).__name__}: {error}", ()
            record.exc_info = record.exc_text = None
        return True
