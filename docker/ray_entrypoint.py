#!/usr/bin/env python3
"""Container entrypoint for segdistill images.

* ``ray start ...`` commands get per-node port flags injected, so that several Ray nodes can run on
  ONE host with ``network_mode: host`` (every container shares the host's ports):

  - the head (``--head``) takes slot 0;
  - every worker claims the lowest free slot 1, 2, ... under an exclusive lock on the shared volume
    (``$SEGDISTILL_PORT_LOCK``, default ``/shared/.ray-node-ports.lock``) and keeps the lock until its
    raylet has bound its port, so replicas started together by ``--scale ray-worker=N`` never collide.

  Slot ``s`` owns ports ``RAY_PORT_BASE + s*RAY_PORT_BLOCK`` .. ``+RAY_PORT_BLOCK-1`` (defaults 20000
  and 500): offsets 0-5 are node manager, object manager, metrics export, dashboard agent HTTP,
  dashboard agent gRPC and runtime-env agent; offsets 100.. are the worker-process ports. All blocks stay
  below the kernel's ephemeral range (``ip_local_port_range``), so random ports never hit them. Flags
  that the command already sets are left alone; ``RAY_NODE_SLOT`` forces a slot.
* token authentication (Ray's ``RAY_AUTH_MODE=token``): the head creates the shared token file
  ``$RAY_AUTH_TOKEN_PATH`` (64 hex characters, mode 0600) when it does not exist yet, and workers wait
  for it (bounded by ``SEGDISTILL_RAY_START_TIMEOUT``) before joining. Every process started in the
  container, drivers included, reads the same file; clients outside set the same two variables.
* ``--healthcheck``: exit 0 when the Ray node started here is serving (always 0 when no Ray node was
  started by this entrypoint, e.g. ``docker run IMAGE python ...``).
* anything else is exec'd unchanged.

Only the standard library is used so that the logic can be unit-tested without Docker.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

STATE_FILE = Path(os.environ.get("SEGDISTILL_RAY_STATE", "/tmp/segdistill-ray-node.json"))
DEFAULT_LOCK = "/shared/.ray-node-ports.lock"
SHARED_DIRS = ("/shared", "/app/results", "/app/zoo", "/app/data")

# offset within a slot's port block -> `ray start` flag
PORT_OFFSETS = {
    "--node-manager-port": 0,
    "--object-manager-port": 1,
    "--metrics-export-port": 2,
    "--dashboard-agent-listen-port": 3,
    "--dashboard-agent-grpc-port": 4,
    "--runtime-env-agent-port": 5,
}
WORKER_PORT_OFFSET = 100


def log(msg: str) -> None:
    print(f"[segdistill-entrypoint] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pure helpers
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def ephemeral_low(default: int = 32768) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def is_ray_start(argv: Sequence[str]) -> bool:
    return len(argv) >= 2 and os.path.basename(argv[0]) == "ray" and argv[1] == "start"


def slot_ports(slot: int, base: int, block: int) -> dict[str, int]:
    start = base + slot * block
    ports = {flag: start + off for flag, off in PORT_OFFSETS.items()}
    ports["--min-worker-port"] = start + WORKER_PORT_OFFSET
    ports["--max-worker-port"] = start + block - 1
    return ports


def max_slots(base: int, block: int, limit: int) -> int:
    """Number of slots whose whole block lies below ``limit`` (the ephemeral range)."""
    if block <= WORKER_PORT_OFFSET:
        raise ValueError(f"RAY_PORT_BLOCK must be > {WORKER_PORT_OFFSET}, got {block}")
    return max(0, (limit - base) // block)


def inject_port_flags(argv: Sequence[str], ports: dict[str, int]) -> list[str]:
    """Append ``--flag=value`` for every port flag the command does not set itself.

    ``--block`` (if present) is kept last for readability; Ray does not care about order.
    """
    argv = list(argv)
    extra = [f"{flag}={port}" for flag, port in ports.items() if not has_flag(argv, flag)]
    if "--block" in argv:
        argv.remove("--block")
        return argv + extra + ["--block"]
    return argv + extra


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def block_free(ports: dict[str, int]) -> bool:
    fixed = [p for f, p in ports.items() if f not in ("--min-worker-port", "--max-worker-port")]
    return not any(port_in_use(p) for p in fixed)


# ----------------------------------------------------------------------------- process handling
@contextmanager
def port_lock(path: str) -> Iterator[None]:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        fallback = "/tmp/.ray-node-ports.lock"
        log(f"WARNING: cannot open port lock {path} ({e}); using {fallback}, which is NOT shared "
            "between containers: start workers one at a time or make /shared writable.")
        fd = os.open(fallback, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def wait_bound(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_in_use(port):
            return True
        time.sleep(0.5)
    return False


def check_shared_dirs() -> None:
    for d in SHARED_DIRS:
        if os.path.isdir(d) and not os.access(d, os.W_OK):
            log(f"WARNING: {d} is not writable by uid {os.getuid()}; create the host directory "
                "yourself before `docker compose up` (see docker/README.md) or build with "
                "APP_UID=$(id -u).")


def token_auth() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "disabled").strip().lower() == "token"


def read_token() -> str:
    """The cluster's token in token mode ('' otherwise, or while the file does not exist yet)."""
    if not token_auth():
        return ""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    try:
        return Path(path).read_text().strip() if path else ""
    except OSError:
        return ""


def prepare_token(head: bool, timeout: float) -> bool:
    """Token mode: the head writes ``$RAY_AUTH_TOKEN_PATH`` once (a new cluster keeps an existing
    token, so clients configured earlier keep working); a worker waits until it can read it."""
    if not token_auth() or os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if not path:
        log("ERROR: RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN_PATH (a file on the shared volume) or RAY_AUTH_TOKEN")
        return False
    if head and not read_token():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(tmp, path)  # atomic: a worker never reads half a token
        log(f"token authentication: wrote a new cluster token to {path}")
    deadline = time.monotonic() + timeout
    while not read_token():
        if time.monotonic() > deadline:
            log(f"ERROR: RAY_AUTH_MODE=token but no token in {path} after {timeout:.0f} s (is the head up?)")
            return False
        time.sleep(0.5)
    return True


def run_ray_start(argv: list[str]) -> int:
    head = "--head" in argv
    base = _env_int("RAY_PORT_BASE", 20000)
    block = _env_int("RAY_PORT_BLOCK", 500)
    n_slots = max_slots(base, block, _env_int("RAY_PORT_LIMIT", ephemeral_low()))
    forced = os.environ.get("RAY_NODE_SLOT", "").strip()
    if head:
        candidates = [int(forced) if forced else 0]
    elif forced:
        candidates = [int(forced)]
    else:
        candidates = list(range(1, n_slots))
    if not candidates or max(candidates) >= n_slots:
        log(f"ERROR: no port slot available (RAY_PORT_BASE={base}, RAY_PORT_BLOCK={block}, "
            f"{n_slots} slots below the ephemeral range); lower RAY_PORT_BLOCK or run fewer workers.")
        return 2
    check_shared_dirs()
    if not prepare_token(head, timeout=_env_int("SEGDISTILL_RAY_START_TIMEOUT", 180)):
        return 2

    proc: subprocess.Popen | None = None
    stopping: list[float] = []  # monotonic time of the first SIGTERM/SIGINT

    def forward(signum, _frame):
        log(f"signal {signum}: stopping the Ray processes of this node")
        if not stopping:
            stopping.append(time.monotonic())
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    with port_lock(os.environ.get("SEGDISTILL_PORT_LOCK", DEFAULT_LOCK)):
        for slot in candidates:
            ports = slot_ports(slot, base, block)
            if block_free(ports):
                break
            log(f"slot {slot} ports in use, trying the next one")
        else:
            log(f"ERROR: all port slots {candidates[0]}..{candidates[-1]} are in use on this host"
                + (" (is another Ray head already running here?)" if head else ""))
            return 2
        if stopping:
            return 0
        cmd = inject_port_flags(argv, ports)
        log(f"{'head' if head else 'worker'} node in port slot {slot}: {' '.join(cmd)}")
        # Own session: on SIGTERM we signal the whole Ray process group of this node, nothing else.
        proc = subprocess.Popen(cmd, start_new_session=True)
        nm_port = int(flag_value(cmd, "--node-manager-port") or ports["--node-manager-port"])
        STATE_FILE.write_text(json.dumps({
            "head": head,
            "slot": slot,
            "node_manager_port": nm_port,
            "gcs_port": int(flag_value(cmd, "--port") or 6379) if head else None,
            "gcs_address": flag_value(cmd, "--address"),
            "dashboard_port": int(flag_value(cmd, "--dashboard-port") or 8265) if head else None,
            "pid": proc.pid,
        }))
        # Keep the lock until the raylet owns its port so the next worker sees the slot taken.
        if not wait_bound(nm_port, proc, timeout=_env_int("SEGDISTILL_RAY_START_TIMEOUT", 180)):
            log("WARNING: raylet port not bound yet (or `ray start` exited); releasing the port lock")

    grace = _env_int("SEGDISTILL_STOP_GRACE", 40)  # Ray drains for up to 30 s
    while True:
        try:
            rc = proc.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > grace:
                log("Ray did not stop in time; killing its process group")
                os.killpg(proc.pid, signal.SIGKILL)
    try:  # give the raylet & co. a moment to exit after their group was signalled
        for _ in range(20):
            os.killpg(proc.pid, 0)
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return 0 if rc in (-signal.SIGTERM, 128 + signal.SIGTERM) else rc


# ----------------------------------------------------------------------------- health check
def _connectable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def healthcheck() -> int:
    if not STATE_FILE.exists():
        return 0  # not a Ray node started by this entrypoint: nothing to check
    state = json.loads(STATE_FILE.read_text())
    problems = []
    if not port_in_use(state["node_manager_port"]):
        problems.append(f"raylet port {state['node_manager_port']} not bound")
    if state.get("head"):
        if not _connectable(state["gcs_port"]):
            problems.append(f"GCS port {state['gcs_port']} not accepting connections")
        url = f"http://127.0.0.1:{state['dashboard_port']}/api/gcs_healthz"
        token = read_token()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310 (fixed local URL)
                if r.status != 200:
                    problems.append(f"dashboard {url} -> HTTP {r.status}")
        except OSError as e:
            problems.append(f"dashboard {url} unreachable: {e}")
    elif state.get("gcs_address"):
        host, _, port = state["gcs_address"].rpartition(":")
        if port.isdigit() and not _connectable(int(port), host or "127.0.0.1"):
            problems.append(f"head GCS {state['gcs_address']} unreachable")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["--healthcheck"]:
        return healthcheck()
    if not argv:
        argv = ["bash"]
    if is_ray_start(argv):
        return run_ray_start(argv)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        log(f"command not found: {argv[0]}")
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
