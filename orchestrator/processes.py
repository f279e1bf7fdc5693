"""Is the process that left a run or trial RUNNING still there? Only this host's are judged:
another host's worker may still run them (on a shared queue, the heartbeat decides). And
children that die with the process that started them (:func:`death_signal`)."""

from __future__ import annotations

import signal
import socket
from typing import Any, Callable

PR_SET_PDEATHSIG = 1


def is_orphan(host: str | None, pid: str | int | None) -> bool:
    """True when (host, pid) names a process of this host that is gone (a zombie counts as gone).

    A record without a host is taken as this host's (older records carried only a pid).
    """
    import psutil

    if (host or socket.gethostname()) != socket.gethostname():
        return False
    pid = str(pid or "")
    if not pid.isdigit():
        return True
    try:  # a zombie (exited, not yet reaped) is not running anything
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # access denied: someone's live process
        return False


def death_signal() -> Callable[[], Any] | None:
    """A child's pre-exec step: SIGTERM when its parent dies, however it dies (Linux); None where
    there is no prctl. libc is looked up here, in the parent: the child only calls prctl."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the child outlives a SIGKILLed parent
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
