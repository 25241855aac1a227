"""Signal handling of the service-running commands (memory_engine/services.py): a stop request
must survive Python swallowing the exception its handler raised."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import pytest

from memory_engine.tooling.processes import (
    ShutdownRequested,
    raise_if_shutdown_requested,
    shutdown_on_signals,
)


class SignalInDestructor:
    """Raises ``sig`` in this process from ``__del__``: the handler's exception is then raised
    inside a destructor, where Python reports it as unraisable and drops it (as it does in a
    weakref callback, where a real Ctrl-C once landed)."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        signal.raise_signal(self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_swallowed_stop_request_is_raised_at_the_next_check(
    sig: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    with shutdown_on_signals():
        raise_if_shutdown_requested()  # nothing requested yet
        holder = SignalInDestructor(sig)
        del holder  # the handler runs inside __del__; its exception is dropped
        assert [type(d.exc_value) for d in dropped] == [ShutdownRequested]
        with pytest.raises(ShutdownRequested) as caught:
            raise_if_shutdown_requested()
        assert caught.value.signum == sig
    raise_if_shutdown_requested()  # outside the block nothing is pending


def test_the_handler_raises_at_once_where_it_can() -> None:
    with pytest.raises(ShutdownRequested) as caught, shutdown_on_signals():
        signal.raise_signal(signal.SIGINT)
    assert caught.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_other_threads_neither_install_handlers_nor_raise() -> None:
    seen: list[object] = []

    def run() -> None:
        with shutdown_on_signals():
            seen.append(signal.getsignal(signal.SIGTERM))
            raise_if_shutdown_requested()

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]
