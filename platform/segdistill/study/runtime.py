"""Starting, joining and stopping Ray; the state-API (dashboard) probe; placement-group release.

Why the dashboard matters (verified against Ray 2.58's source): a Train V2 run registers its worker
placement group with a detached ``PlacementGroupCleaner`` actor
(``ray/train/v2/_internal/callbacks/placement_group_callback.py``). When Tune stops the trial that
launched the run (ASHA, a stop criterion), the trial actor dies, the TrainController it owns dies
with it, and the placement group (scoped to the job, not to the controller) is released *only* by
that cleaner, which polls ``ray.util.state.get_actor`` (``.../controller/placement_group_cleaner.py``
via ``ray/train/v2/_internal/state/util.py::is_actor_alive``). That call goes through the dashboard's
state API; without it the cleaner logs a warning and retries forever, the placement group keeps its
CPUs/GPUs, and the next Train-backed trial waits for workers that never start.

This module therefore (1) starts local Ray *with* the dashboard, (2) probes the state API at start
and (3) offers :func:`release_placement_group`, which the driver uses to free a stopped trial's
placement group itself (no state API needed), so a study is safe with or without the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Iterator

import ray

from .interrupt import set_own_gcs

log = logging.getLogger(__name__)

# Tune writes its experiment state (what resume reads) at most this often (seconds).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
# Each evaluation checkpoints (num_to_keep=1), which makes Tune warn about snapshot frequency.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


ADDRESS_PROBE_S = 10.0
"""How long :func:`probe_address` waits for a TCP answer from ``--address`` before giving up (seconds)."""


class RayAddressError(ConnectionError):
    """Nothing answers at the Ray address a study was told to join."""


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[-1].strip().rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def resolve_address(address: str) -> str:
    """``address`` as Ray would use it: ``"auto"`` is ``RAY_ADDRESS`` or the cluster this machine's
    last ``ray start`` recorded (``<temp dir>/ray_current_cluster``); '' if ``"auto"`` finds none."""
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env != "auto":
        return env
    from ray._private.utils import read_ray_address

    try:
        return read_ray_address() or ""
    except OSError:
        return ""


def probe_address(address: str, timeout_s: float = ADDRESS_PROBE_S) -> None:
    """Raise :class:`RayAddressError` unless something accepts a TCP connection at ``address``
    (``host:port``, ``ray://host:port`` or ``auto``) within ``timeout_s`` seconds. Without this,
    ``ray.init`` retries an address nobody listens on for minutes without a word."""
    resolved = resolve_address(address)
    if address == "auto" and not resolved:
        raise RayAddressError("--address auto: no Ray cluster is recorded on this machine (RAY_ADDRESS is unset and "
                              "no `ray start --head` wrote ray_current_cluster); start one or drop --address")
    hp = _host_port(resolved)
    if hp is None:
        raise RayAddressError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto")
    host, port = hp
    shown = address if resolved == address else f"{address} (= {resolved})"
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(left, 3.0)):
                return
        except OSError as exc:
            last = exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    why = getattr(last, "strerror", None) or str(last) or "no answer"
    raise RayAddressError(f"--address {shown}: nothing answers at {host}:{port} within {timeout_s:g} s ({why}); "
                          "is the cluster's head running (ray start --head --port PORT)? Without --address the "
                          "study starts a local Ray of its own") from None


@dataclass(frozen=True)
class RayInfo:
    address: str
    started_here: bool
    state_api: bool
    resources: dict[str, float]
    nodes: int


def state_api_available(timeout_s: float = 8.0) -> bool:
    """True if Ray's state API (served by the dashboard) answers within ``timeout_s``.

    The dashboard may come up a few seconds after ``ray.init``; retried, bounded in time.
    """
    from ray.util.state import list_nodes

    # this driver's own cluster: without an address the state API picks "the latest" Ray on the
    # machine, which may be someone else's
    own = getattr(ray.get_runtime_context(), "gcs_address", None) if ray.is_initialized() else None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            list_nodes(address=own, limit=1, timeout=5, raise_on_missing_output=False)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            if time.monotonic() >= deadline:
                log.debug("state API unavailable: %s", exc)
                return False
            time.sleep(1.0)


def _local_init_kwargs(num_cpus: int | None, num_gpus: int | None, dashboard: bool) -> dict:
    kw: dict = {"include_dashboard": dashboard, "log_to_driver": True,
                "configure_logging": True, "logging_level": logging.WARNING}
    if dashboard:
        kw["dashboard_host"] = "127.0.0.1"
    if num_cpus is not None:
        kw["num_cpus"] = num_cpus
    if num_gpus is not None:
        kw["num_gpus"] = num_gpus
    # The object store only carries small configs here; a modest one starts faster on laptops.
    total = _total_memory_bytes()
    if total:
        kw["object_store_memory"] = int(min(2 << 30, max(256 << 20, total // 16)))
    return kw


def _total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@contextlib.contextmanager
def ray_session(address: str | None = None, *, dashboard: bool = True, num_cpus: int | None = None,
                num_gpus: int | None = None, probe_state_api: bool = True) -> Iterator[RayInfo]:
    """Start a local Ray of our own (sized to this machine, dashboard on by default), or join
    ``address`` (``"auto"``: the cluster this machine's ``ray start`` or ``RAY_ADDRESS`` names).

    Reuses an already initialised Ray (and then leaves it running). Ray started here is always
    shut down on exit, also on errors and KeyboardInterrupt.
    """
    started = False
    prev_sigterm = _python_sigterm_handler()
    if not ray.is_initialized():
        if address:
            probe_address(address)
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        elif os.environ.get("RAY_ADDRESS"):  # the user's environment names a cluster: join it
            probe_address(os.environ["RAY_ADDRESS"])
            ray.init(log_to_driver=True, logging_level=logging.WARNING)
        else:
            # address="local": always a Ray of our own, even when another one runs on this machine
            # (ray.init() would join the last `ray start --head` it finds in /tmp/ray, and refuse
            # our sizing arguments); join that one with --address auto
            ray.init(address="local", **_local_init_kwargs(num_cpus, num_gpus, dashboard))
        started = True
        _restore_sigterm(prev_sigterm)
    try:
        # Local Ray started here without the dashboard has no state API: no need to wait for it.
        ok = state_api_available() if probe_state_api and (dashboard or not started or address) else False
        ctx = ray.get_runtime_context()
        if started and not address and not os.environ.get("RAY_ADDRESS"):
            set_own_gcs(getattr(ctx, "gcs_address", "") or "")
        info = RayInfo(address=getattr(ctx, "gcs_address", "") or "", started_here=started, state_api=ok,
                       resources={k: float(v) for k, v in ray.cluster_resources().items()},
                       nodes=sum(1 for n in ray.nodes() if n.get("Alive")))
        yield info
    finally:
        if started:
            set_own_gcs("")
            with contextlib.suppress(Exception):
                ray.shutdown()


def _python_sigterm_handler() -> object:
    """The SIGTERM handler installed from Python (a driver's interrupt handler), else None."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    h = signal.getsignal(signal.SIGTERM)
    return h if callable(h) else None


def _restore_sigterm(handler: object) -> None:
    """``ray.init`` replaces the SIGTERM handler with ``sys.exit`` (which ends in an abort and a C++
    stack dump once Ray is up); put back the driver's own handler, if it had one."""
    import signal

    if handler is not None:
        signal.signal(signal.SIGTERM, handler)  # type: ignore[arg-type]


def current_placement_group_hex() -> str:
    """The id of the placement group the calling task/actor runs in ('' if none)."""
    from ray.util.placement_group import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else ""


def release_placement_group(pg_hex: str) -> bool:
    """Remove placement group ``pg_hex`` if it still exists; True if it was removed here.

    Uses only the GCS placement-group table (no dashboard). Removing it kills the actors in it,
    which is what we want for the workers of a trial Tune has already stopped.
    """
    if not pg_hex:
        return False
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
    try:
        state = placement_group_table(pg).get("state")
    except Exception:  # noqa: BLE001
        return False
    if state in (None, "REMOVED"):
        return False
    try:
        remove_placement_group(pg)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not release placement group %s: %s", pg_hex, exc)
        return False
    log.info("released placement group %s of a stopped Train-backed trial", pg_hex)
    return True


def max_concurrent_trials(resources: dict[str, float], per_trial: dict[str, float]) -> int:
    """How many trials fit at once: min over requested resource kinds of floor(total / per trial)."""
    fits = [math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items() if v > 0]
    return max(1, min(fits)) if fits else 1
