"""The one stop module: which signals stop, what a first and a second signal do, the reason
texts and exit codes, nesting and restoring handlers. Real signals, sent to this process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from orchestrator.execute import stop


def send(signum: int) -> None:
    """Deliver ``signum`` to this process; its Python handler runs before this returns."""
    os.kill(os.getpid(), signum)
    time.sleep(0.01)


@pytest.mark.parametrize("signum, reason, code", [(signal.SIGTERM, "preempted (SIGTERM)", 143),
                                                   (signal.SIGUSR1, "preempted (SIGUSR1)", 143),
                                                   (signal.SIGINT, "interrupted (SIGINT)", 130)])
def test_outside_a_deferral_a_signal_raises_where_it_lands(signum, reason, code):
    with stop.handling() as flag:
        with pytest.raises(stop.Stopped) as stopped:
            send(signum)
        assert stopped.value.signum == signum and flag.signum == signum
        assert stopped.value.reason == reason == flag.reason and stopped.value.exit_code == code == flag.exit_code
        assert isinstance(stopped.value, KeyboardInterrupt)  # `except Exception` never takes it for a failure


def test_in_a_deferral_the_first_signal_sets_the_flag_and_a_second_raises():
    with stop.handling() as flag, flag.deferred():
        send(signal.SIGTERM)
        assert flag.is_set() and flag.signum == signal.SIGTERM
        send(signal.SIGTERM)  # the same signal at once: the same request (PR_SET_PDEATHSIG per thread)
        with pytest.raises(stop.Stopped) as second:
            send(signal.SIGINT)
        assert second.value.signum == signal.SIGINT and flag.signum == signal.SIGTERM


def test_a_deferral_may_answer_a_second_signal_itself():
    answered = []
    with stop.handling() as flag, flag.deferred(on_second=lambda: answered.append(1)):
        send(signal.SIGINT)
        send(signal.SIGTERM)
    assert answered == [1] and flag.signum == signal.SIGINT


def test_nested_blocks_share_one_flag_and_the_outer_restores_the_handlers():
    before = {sig: signal.getsignal(sig) for sig in stop.SIGNALS}
    with stop.handling() as outer, outer.deferred():
        with stop.handling() as inner:
            assert inner is outer
            send(signal.SIGUSR1)
        assert outer.signum == signal.SIGUSR1  # what happened inside is the process's stop request
    assert {sig: signal.getsignal(sig) for sig in stop.SIGNALS} == before
    with stop.handling() as fresh:  # a new block starts with no request
        assert not fresh.is_set()
