"""The project's exceptions: one root, subclasses named by what the user should do next."""


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
