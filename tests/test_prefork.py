"""project.prefork: a SIGTERM that arrives while a listener is still starting (its port taken, its
workers forked, its own handler not yet installed) is held and acted on once the handler is there,
instead of ending the parent and leaving its workers serving."""

from __future__ import annotations

import os
import signal

from project.prefork import hold_termination, release_termination


def test_a_sigterm_while_starting_is_held_then_handled_once_the_handler_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    handled = []
    try:
        held = hold_termination()
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before kill() returns
        assert held == [signal.SIGTERM] and handled == []
        release_termination(held, lambda signum, frame: handled.append(signum))
        assert handled == [signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)  # from now on, the command's own handler
        assert handled == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_without_a_sigterm_the_handler_is_installed_and_not_called():
    before = signal.getsignal(signal.SIGTERM)
    handled = []
    try:
        release_termination(hold_termination(), lambda signum, frame: handled.append(signum))
        assert handled == []
        assert signal.getsignal(signal.SIGTERM) is not before
    finally:
        signal.signal(signal.SIGTERM, before)
