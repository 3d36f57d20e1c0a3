"""Ctrl-C and SIGTERM: the first stops the run where it stands, the second at once.

Ray Tune's own SIGINT handler only ends its loop; what comes after `fit()` (our confirmation
runs) would still start, and SIGTERM it does not take. So we take the signals ourselves
(`TUNE_DISABLE_SIGINT_HANDLER`), leave the stop for the trials, and call Ray's handler (kept on
SIGUSR1): Ray then starts no new trial, saves the experiment as it stands (so --resume runs the cut
trials and the rest of the search) and stops the running trials, whose `cleanup` tears their
engines down. The driver asks `requested` before each phase. A second signal
raises KeyboardInterrupt: the driver kills the engines without waiting (exit 130). Signals after
that, and during the end-of-run sweep, are not acted on (said once): they could only cut short the
cleanup (every wait of which has a deadline) and leave engines running. (As the interpreter exits,
after the cleanup, Python puts the default handlers back: a signal then ends the process by it.)

`RunEnd` carries the other ends of the run (the time budget, patience, the failure guard) to
the trials through the stop it leaves in the storage.

`TrialEnds` tells trials the run cut off (a signal, the time budget, patience, the failure guard)
from those that ended: Ray marks both TERMINATED, but only the latter reach `on_trial_complete`
(the scheduler's stops included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from ray.tune import Callback, Stopper
from ray.tune.stopper import CombinedStopper

from llm_autotuner.cluster.storage import Storage


_first_signal: list[str] = []  # the signal the run's handler took, once one came (this process)


def handled_a_signal() -> bool:
    """Whether a KeyboardInterrupt is a second signal (the run's handler took the first), rather
    than a Ctrl-C before the handler was installed: during the setup, before any trial. (Read from
    here, not from the exception's type: code between the handler and the CLI may raise its own.)"""
    return bool(_first_signal)


class Interrupt:
    """The first signal leaves a stop in the storage. A trial whose actor Ray was already starting
    when the signal came reads it before it deploys anything (see TrialTrainable.step), so no
    engine starts after a stop even in that window, on whichever node. (Not a Stopper: a Stopper's
    end would save the cut trials as ended; Ray's own handler ends the fit, see `_handle`.)"""

    def __init__(self, storage: Storage) -> None:
        self.requested: str | None = None  # the signal's name, once one came
        self.storage = storage
        storage.clear_stop()  # a resumed run's earlier stop

    def install(self) -> None:
        """Take SIGINT and SIGTERM (main thread only; call after ray.init, which sets its own)."""
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            # The way out has begun: later signals could only cut its cleanup short.
            for sig in STOPPING_SIGNALS:
                signal.signal(sig, _noted)
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        _first_signal.append(self.requested)
        # Ray Tune's own end of a run on a signal (the handler it keeps on SIGUSR1 while a fit()
        # runs): its loop stops starting trials and saves the experiment with the cut trials still
        # running and the search unfinished, then stops the trials; --resume runs them again, as
        # after a kill. (A Stopper's end would save them as ended and the search as finished.)
        ray_handler = signal.getsignal(signal.SIGUSR1)
        if callable(ray_handler):
            ray_handler(signal.SIGUSR1, frame)
        # In a thread: on an object store the write is a network call, and a second Ctrl-C must
        # not wait for it.
        threading.Thread(target=self._leave_stop, name="autotuner-stop", daemon=True).start()
        try:
            print(f"\n[autotuner] {self.requested}: stopping; the running trials' engines are being torn down "
                  "(again to kill them at once)", file=sys.stderr, flush=True)
        except OSError:
            pass  # stderr gone (the terminal closed): stopping matters, not saying so

    def _leave_stop(self) -> None:
        try:
            self.storage.request_stop()
        except OSError:
            pass  # an unreachable storage: Ray still stops the running trials

    def clear_run_end(self) -> None:
        """Takes back the stop that the search's end left for its trials (RunEnd), so that the
        confirmation runs go on; a signal's stays. (`requested` is set before the signal's own
        write starts: seen unset here, any later signal writes after this.)"""
        with contextlib.suppress(OSError):  # an unreachable storage: those runs stop at once, results still written
            self.storage.clear_stop()
        if self.requested:
            self._leave_stop()


class RunEnd(CombinedStopper):
    """The run's stoppers as one: the time budget, patience, the failure guard. Whichever ends the run leaves the stop in the storage before Ray stops the trials: Ray asks a
    trial to stop only once its current step returns (an engine loading a model, a warm-up, a
    stage: minutes) and gives it 10 s at the run's end, so a trial waiting there would have its
    teardown cut short. Seeing the stop, it tears down itself within a second (StopWatch).

    Pickled by value with Ray's experiment state: on --resume Ray puts this saved copy back, its
    time budget what the first session left of it (the session-bound stoppers in it come back as
    the new session's; tuner/session.py)."""

    def __init__(self, storage: Storage, *stoppers: Stopper):
        super().__init__(*stoppers)
        self.storage = storage
        self.left = False  # the stop was left in the storage

    def stop_all(self) -> bool:
        if not super().stop_all():
            return False
        if not self.left:
            self.left = True
            with contextlib.suppress(OSError):  # an unreachable storage: Ray still stops the trials
                self.storage.request_stop()
        return True

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, left=False)  # a resumed run clears the earlier stop (Interrupt)


STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _noted(signum: int, frame) -> None:
    """A signal during a cleanup: said (once), not acted on. (Not SIG_IGN: a signal already on its
    way to a handler would then raise "ignored due to race condition" in whatever code runs.)"""
    if not _noted.said:
        _noted.said = True
        with contextlib.suppress(OSError):
            print(f"\n[autotuner] {signal.Signals(signum).name}: cleaning up what this run started; it ends "
                  "by itself shortly (more signals are not acted on)", file=sys.stderr, flush=True)


_noted.said = False


@contextlib.contextmanager
def signals_noted():
    """While a cleanup runs, SIGINT and SIGTERM only say that it does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOPPING_SIGNALS}
    for sig in STOPPING_SIGNALS:
        signal.signal(sig, _noted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def ray_in_own_session():
    """The Ray processes started meanwhile (a local Ray's GCS, raylet, dashboard) get a session of
    their own, out of reach of a signal sent to the driver's whole process group (`timeout`, a
    service manager, a scheduler ending a job): that SIGTERM killed the GCS too, and the driver,
    stopping the run, then waited 60 s for it and ended without its summary (seen). Ray keeps them
    from the terminal's Ctrl-C for the same reason (SIGINT blocked in them), and on Windows starts
    them in a process group of their own, as here. The GCS and raylet still end with the driver,
    however it ends (Ray's kernel fate-sharing: PR_SET_PDEATHSIG), so only where Ray has that are
    they moved; after a SIGKILL, the raylet's two agents follow it within about a minute (seen; the
    same as before this, when only the driver was killed)."""
    from ray._private import services, utils

    if not utils.detect_fate_sharing_support():
        yield
        return
    popen = services.ConsolePopen

    class OwnSessionPopen(popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, start_new_session=True)

    services.ConsolePopen = OwnSessionPopen
    try:
        yield
    finally:
        services.ConsolePopen = popen


@contextlib.contextmanager
def signals_deferred(until: str):
    """While Ray starts, a first SIGINT or SIGTERM is held until it has (then KeyboardInterrupt):
    cut mid-start, its half-made worker crashed the interpreter at exit (SIGSEGV, seen). A second
    one cuts it at once. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[str] = []

    def hold(signum: int, frame) -> None:
        if came:
            raise KeyboardInterrupt
        came.append(signal.Signals(signum).name)
        with contextlib.suppress(OSError):
            print(f"\n[autotuner] {came[0]}: stopping once {until} (again to stop at once)", file=sys.stderr,
                  flush=True)

    previous = {sig: signal.getsignal(sig) for sig in STOPPING_SIGNALS}
    for sig in STOPPING_SIGNALS:
        signal.signal(sig, hold)
    try:
        yield
    except Exception:
        if came:  # what failed is likely the signal's doing (a Ray process it reached too)
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came:
        raise KeyboardInterrupt


class TrialEnds(Callback):
    def __init__(self) -> None:
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)

    @property
    def cut(self) -> set[str]:
        """Trials of this session that the run's end (a stop of the whole run) cut off."""
        return self.started - self.ended
