"""Ctrl-C and SIGTERM in a study driver: a bounded, clean stop that never calls unfinished trials finished.

While :func:`interruptible` is active (``run_study`` and ``teachers_only`` wrap their whole run in
it), the first SIGINT or SIGTERM

- prints one line saying what happens and the bound (:data:`STOP_BOUND_S`);
- inside Tune's loop (:func:`tune_loop`), asks Tune to end its run the way its own Ctrl-C handler
  does (last experiment snapshot; unfinished trials stay unfinished there, so ``--resume`` restarts
  them from their checkpoints); the runner then records every unfinished trial with status
  ``interrupted`` and raises :class:`StudyInterrupted`;
- anywhere else (preflight, starting Ray, between phases), raises :class:`StudyInterrupted` at once;
- starts a watchdog: if the process has not left :func:`interruptible` (trials stopped, Ray shut
  down) when the bound is nearly spent (``max(0.75 * bound, bound - 10 s)``), or as soon as the
  local Ray this driver started is gone (a SIGTERM to the whole process group ends Ray's own
  processes, and Tune's cleanup would then wait on the dead GCS), it records the unfinished trials
  from their checkpoints on disk (:func:`on_abandon`) and exits with ``128 + signal``.

A second signal exits at once (``128 + signal``). Tune's own SIGINT handler (which prints its
``Tuner.restore(...)`` advice) is disabled; the script prints its own ``--resume`` command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

log = logging.getLogger(__name__)

STOP_BOUND_S = 60.0
"""Upper bound (seconds) from the first signal to the driver's exit; ``SEGDISTILL_STOP_BOUND_S``."""


def quiet_stop_in_worker() -> None:
    """In a trial process: a stop signal landing inside a garbage-collection callback is not an error.

    Ray's worker turns SIGTERM into ``SystemExit``; when that lands while Python runs a finaliser
    (e.g. ``WeakSet._remove``), Python cannot raise it there and prints "Exception ignored in ...
    Traceback ... SystemExit", which Ray forwards to the driver's terminal on every Ctrl-C of a
    study. This hook drops exactly those (``SystemExit``/``KeyboardInterrupt``); every other
    unraisable exception still goes to the previous hook. Installed once per process."""
    previous = sys.unraisablehook
    if getattr(previous, "segdistill_quiet_stop", False):
        return

    def hook(unraisable: "sys.UnraisableHookArgs") -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, (SystemExit, KeyboardInterrupt)):
            return
        previous(unraisable)

    hook.segdistill_quiet_stop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class StudyInterrupted(KeyboardInterrupt):
    """The study was stopped by SIGINT/SIGTERM; unfinished trials are recorded as ``interrupted``."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signame, signal.SIGINT))


@dataclass
class _State:
    signame: str | None = None
    at: float = 0.0
    in_tune: bool = False
    active: bool = False
    gcs: str = ""  # host:port of the local Ray this driver started ('' if it joined a cluster)


_STATE = _State()
_ABANDON_HOOKS: list[Callable[[], None]] = []


def set_own_gcs(address: str) -> None:
    """The GCS of the local Ray this driver started: if it dies during the stop (a SIGTERM to the
    whole process group ends Ray's own processes too), waiting for Tune's cleanup is pointless."""
    _STATE.gcs = address or ""


@contextlib.contextmanager
def on_abandon(hook: Callable[[], None]) -> Iterator[None]:
    """Run ``hook`` (record the unfinished trials from disk) if the stop has to be abandoned: Ray
    died under the driver, or the bound is nearly spent."""
    _ABANDON_HOOKS.append(hook)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _ABANDON_HOOKS.remove(hook)


def _gcs_gone() -> bool:
    if not _STATE.gcs:
        return False
    host, _, port = _STATE.gcs.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return False
    except (OSError, ValueError):
        return True


def interrupted() -> str | None:
    """The name of the signal that interrupted the running study (None if none did)."""
    return _STATE.signame


def stop_bound_s() -> float:
    try:
        return float(os.environ.get("SEGDISTILL_STOP_BOUND_S", STOP_BOUND_S))
    except ValueError:
        return STOP_BOUND_S


def _ask_tune_to_stop() -> bool:
    """Call the handler Tune's loop registers for SIGUSR1 (the one it also uses for Ctrl-C): it sets
    the event that ends ``tune.run``'s loop."""
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if not callable(handler) or getattr(handler, "__module__", "") == __name__:
        return False
    try:
        handler(signal.SIGUSR1, None)
    except Exception:  # noqa: BLE001
        return False
    return True


class _TuneAdviceFilter(logging.Filter):
    """Drop Tune's "Resume experiment with: Tuner.restore(...)" advice and its Ctrl-C notice (the
    script prints its own ``--resume`` command)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "Tuner.restore(" not in msg and "Stop signal received" not in msg


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Handle SIGINT/SIGTERM as described in the module docstring (main thread only; nested use is
    a no-op)."""
    if threading.current_thread() is not threading.main_thread() or _STATE.active:
        yield
        return
    bound = stop_bound_s()
    done = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def watchdog(signum: int) -> None:
        start = time.monotonic()
        give_up = start + max(bound * 0.75, bound - 10.0)  # leaves time to record the trials
        gone = 0
        while not done.wait(1.0):
            gone = gone + 1 if _gcs_gone() else 0
            if gone >= 2 or time.monotonic() >= give_up:
                break
        else:
            return
        why = "its local Ray is gone" if gone >= 2 else f"it did not stop within {give_up - start:.0f} s"
        print(f"segdistill: {why} after {signal.Signals(signum).name}; recording the unfinished trials and "
              "exiting (they resume from their last checkpoints with --resume)", file=sys.stderr, flush=True)
        for hook in list(_ABANDON_HOOKS):
            try:
                hook()
            except Exception as exc:  # noqa: BLE001
                print(f"segdistill: could not record the unfinished trials: {exc}", file=sys.stderr, flush=True)
        if done.is_set():
            return
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(128 + signum)

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if _STATE.signame is not None:
            print(f"segdistill: second signal ({name}): exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        _STATE.signame, _STATE.at = name, time.monotonic()
        print(f"\nsegdistill: {name} received: stopping the study's trials and Ray (at most {bound:g} s); "
              "unfinished trials are recorded as interrupted", file=sys.stderr, flush=True)
        threading.Thread(target=watchdog, args=(signum,), name="segdistill-stop-watchdog", daemon=True).start()
        if _STATE.in_tune and _ask_tune_to_stop():
            return  # Tune ends its loop; the runner records and raises StudyInterrupted
        raise StudyInterrupted(name)

    advice = _TuneAdviceFilter()
    tune_logger = logging.getLogger("ray.tune.tune")
    saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    tune_logger.addFilter(advice)
    _STATE.signame, _STATE.in_tune, _STATE.active = None, False, True
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        done.set()
        _STATE.active = False
        for s, h in previous.items():
            with contextlib.suppress(Exception):
                signal.signal(s, h if h is not None else signal.SIG_DFL)
        tune_logger.removeFilter(advice)
        if saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env
        if _STATE.signame is not None:
            log.info("stopped %.1f s after %s", time.monotonic() - _STATE.at, _STATE.signame)


@contextlib.contextmanager
def tune_loop() -> Iterator[None]:
    """Mark that Tune's loop runs (a signal then asks it to stop instead of raising in it)."""
    if _STATE.signame is not None:
        raise StudyInterrupted(_STATE.signame)
    _STATE.in_tune = True
    try:
        yield
    finally:
        _STATE.in_tune = False


def raise_if_interrupted() -> None:
    if _STATE.signame is not None:
        raise StudyInterrupted(_STATE.signame)


def stopped_after_s() -> float:
    """Seconds since the interrupting signal (0 if none)."""
    return time.monotonic() - _STATE.at if _STATE.signame is not None else 0.0
