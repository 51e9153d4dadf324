"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

The first signal only sets a flag: the pipeline finishes the file in flight, writes the
manifest and returns, and the CLI exits with 128 + the signal number (130, 143). A second
signal raises KeyboardInterrupt at once; atomic writes still leave no partial files.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager: while inside, SIGINT/SIGTERM request a stop instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: the user means now
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        # Signal handlers can only be installed from the main thread (not in a notebook
        # worker thread or a test runner's thread); elsewhere the defaults stay.
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                # An ignored signal (nohup, a background job) stays ignored.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}
