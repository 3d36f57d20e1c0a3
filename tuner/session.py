"""Stoppers that stay this driver session's own across `--resume`.

Ray saves its experiment state with the run's stoppers in it, and on `--resume` puts the saved
ones back into its controller (ray/tune/execution/tune_controller.py: `resume` and
`__setstate__`), whatever stoppers the new session passes. Those unpickled copies are not the
objects this session's signal handler sets, its callbacks update or `_finish` reads: a Ctrl-C,
the failure guard and `patience` stopped nothing. Pickled as a reference instead, a saved stopper
comes back as this session's instance of its class.
"""

from __future__ import annotations

_INSTANCES: dict[str, object] = {}


def _this_sessions(key: str) -> object | None:
    """This process's instance for `key` (None where there is none: only a controller of this
    session ever calls a stopper, and it runs after the driver made its own)."""
    return _INSTANCES.get(key)


class SessionBound:
    """Call `bind()` in `__init__`: the instance becomes what its saved copies load as."""

    def bind(self) -> None:
        _INSTANCES[self._session_key()] = self

    @classmethod
    def _session_key(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    def __reduce__(self):
        return _this_sessions, (self._session_key(),)
