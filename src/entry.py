"""The first code of every `mailjobs` process: its SIGTERM/SIGINT handlers, before anything slow.

A service manager may stop a process at any moment of its start-up (systemd stopping a unit
right after starting it, a container runtime, a test tearing a fleet down). Importing Flask and
the Google client, reading settings, reaching the database and migrating take from half a
second to many seconds (a database that does not answer); a signal in that window used to kill
the process by the signal (exit -15) instead of stopping it. So this module, which imports only
the standard library, installs the handlers first:

- **during start-up** a signal ends the process at once with exit code 0 and one log line:
  nothing has been claimed or sent yet, so there is nothing to finish (``finally`` blocks and
  atexit handlers, such as the project-local MariaDB's clean stop, still run);
- **once the work has begun** (`running(stop)`: the worker loop or the HTTP server) the first
  signal calls ``stop`` (a warm stop: finish the messages in hand, release the rest) and a
  second one exits at once with 130.

Signals the parent left blocked are unblocked once the handlers are in place, so one sent
before this process could handle it is delivered then. The one window left is the Python
interpreter's own start, before any line of mailjobs runs (measured in bench/README.md).
"""
from __future__ import annotations

# Only what the interpreter has already loaded: `signal` (its enum), `typing` and `logging`
# would each cost milliseconds before the handlers are in place, so the C module `_signal`
# is used directly and logging is looked up only once something else imported it.
import _signal  # type: ignore[import-not-found]  # no stub: the C module under signal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

WARNING, ERROR = 30, 40
SIGNALS = (_signal.SIGTERM, _signal.SIGINT)
NAMES = {_signal.SIGTERM: "SIGTERM", _signal.SIGINT: "SIGINT"}


class StartupInterrupted(SystemExit):
    """A stop signal arrived before the process began its work: exit 0, nothing to finish."""

    def __init__(self, signum: int) -> None:
        super().__init__(0)
        self.signum = signum


_stop: Callable[[], None] | None = None
_received = 0
_requested: int | None = None   # the start-up signal, until the process has exited


def _say(level: int, message: str) -> None:
    """A log line once logging is configured (so LOG_FORMAT=json holds), stderr before that."""
    logging = sys.modules.get("logging")
    root = getattr(logging, "root", None)   # None too while logging is half imported
    if logging is not None and root is not None and root.handlers:
        logging.getLogger("mailjobs").log(level, message)
        return
    sys.stderr.write(f"mailjobs: {message}\n")
    sys.stderr.flush()


def _handler(signum: int, frame: object) -> None:
    global _received
    _received += 1
    name = NAMES.get(signum, f"signal {signum}")
    if _received > 1:
        _say(ERROR, f"{name} again: exiting now; unfinished claims will expire")
        os._exit(130)
    if _stop is None:
        global _requested
        _requested = signum
        _say(WARNING, f"{name} during start-up (pid {os.getpid()}): exiting before "
                              "taking any work")
        # Raised wherever the main thread is; if that is a finalizer (__del__, a weakref
        # callback, run by the garbage collector during an import), Python prints and drops
        # it, so `check()` raises it again before any work starts.
        raise StartupInterrupted(signum)
    _say(WARNING, f"{name}: stopping after the messages in hand (again to exit now)")
    _stop()


def _unraisable(unraisable: object) -> None:
    """A StartupInterrupted raised inside a finalizer (pymysql's MySQLResult.__del__, a weakref
    callback) is dropped by Python, which prints it as "Exception ignored in ..." with a
    traceback: it is not lost (check() raises it again at the next checkpoint), so say nothing.
    Anything else goes to Python's own hook."""
    if isinstance(getattr(unraisable, "exc_value", None), StartupInterrupted):
        return
    sys.__unraisablehook__(unraisable)  # type: ignore[arg-type]


def install() -> None:
    """Install the handlers (start-up behaviour) and unblock the signals. Main thread only."""
    sys.unraisablehook = _unraisable
    for signum in SIGNALS:
        _signal.signal(signum, _handler)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, SIGNALS)


def check() -> None:
    """Raise StartupInterrupted if a stop signal arrived during start-up (a checkpoint)."""
    if _requested is not None:
        raise StartupInterrupted(_requested)


def running(stop: Callable[[], None]) -> None:
    """Start-up is over, work begins: from now on the first signal calls `stop` (warm stop).
    A signal that arrived before this ends the process here instead."""
    global _stop
    check()
    _stop = stop


def main(argv: list[str] | None = None) -> None:
    """The `mailjobs` command (console script): handlers first, then the command line."""
    install()
    from mailjobs.cli.main import main as cli_main

    cli_main(argv)
