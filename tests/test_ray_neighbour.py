"""The suite spares a Ray it did not start: a neighbour head (conftest.neighbour_ray, started in
Ray's default temp dir before any Ray test) is alive, with every one of its processes, after all of
them ran. Collected last (conftest.pytest_collection_modifyitems)."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from ray_helpers import ray_env


@pytest.mark.ray
def test_neighbour_ray_survives_the_suite(neighbour_ray):
    assert neighbour_ray is not None
    assert neighbour_ray.proc.poll() is None, "the neighbour's `ray start --block` ended"
    gone = [pid for pid in neighbour_ray.pids if not psutil.pid_exists(pid)
            or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE]
    assert not gone, f"neighbour Ray processes were ended by the suite: {gone}"
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code, neighbour_ray.address], env=ray_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "1", out.stdout + out.stderr[-2000:]
