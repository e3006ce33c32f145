"""Fixtures shared by the test modules.

Ray etiquette (docs/ERRORS.md, "Ray on a shared machine"): the suite never stops a Ray it did not
start. Tests start Ray in-process with ``ray.init(address="local")`` (ended by ``ray.shutdown``) or
as ``ray start --block`` nodes in their own process groups and private temp dirs
(``ray_helpers.two_node_cluster``, ended by process group). When Ray tests are selected, a
*neighbour* Ray head, as a user's own study would have, runs in the default temp dir for the whole
session, and the last test checks that it is still alive.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A new local Ray started with RAY_AUTH_MODE unset turns on token authentication and writes
# ~/.ray/auth_token, which changes how every later `ray start` on this machine behaves (the user's
# included). The suite's own Rays run without it unless the caller chose a mode
# (tests/ray_helpers.py ray_env does the same for the nodes and scripts it starts).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

NEIGHBOUR_TEST = "test_neighbour_ray_survives_the_suite"


def pytest_collection_modifyitems(config, items):
    """The neighbour check runs after every other test."""
    last = [i for i in items if i.name == NEIGHBOUR_TEST]
    items[:] = [i for i in items if i.name != NEIGHBOUR_TEST] + last


@pytest.fixture(scope="session", autouse=True)
def neighbour_ray(request):
    """A ``ray start --head`` this suite did not start as far as its tests know (own process group,
    default temp dir, so it is the cluster a plain ``ray.init()`` would find); yields its handle or
    None when no Ray test is selected."""
    if not any(item.get_closest_marker("ray") for item in request.session.items):
        yield None
        return
    from ray_helpers import start_neighbour_head, stop_group

    head = start_neighbour_head()
    try:
        yield head
    finally:
        stop_group(head.proc)


@pytest.fixture
def local_ray_cleanup():
    """Shut down the Ray this test process started (``ray.init(address="local")``), also on failure.
    ``ray.shutdown`` ends the processes of a Ray the driver started itself, and only those."""
    yield
    import ray

    ray.shutdown()
