"""Stop a long run cleanly on Ctrl-C or ``kill``: the first SIGINT or SIGTERM only records that a stop was asked for
(the training loop then checkpoints after the optimizer step under way and exits); a second one stops at once with
``KeyboardInterrupt`` (the run resumes from its previous checkpoint).

    with StopRequests() as stops:
        for step in ...:
            ...
            if stops.asked:
                save a checkpoint; raise Interrupted(stops.signum, "...")

A signal that the process was started ignoring (``nohup``, a background job of a non-interactive shell ignores
SIGINT) stays ignored, and handlers are installed only from the main thread; the previous handlers come back on exit.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(RuntimeError):
    """A run stopped on a signal after saving its work; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequests:
    """Context manager that turns the first SIGINT / SIGTERM into ``asked`` and a second into ``KeyboardInterrupt``."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def asked(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread: the defaults stay
        for signum in self.signals:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
