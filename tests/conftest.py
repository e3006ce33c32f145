"""Fixtures shared by the test modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def local_ray_cleanup():
    """Shut down the test process's Ray and stop every Ray process afterwards, also on failure."""
    yield
    import ray

    from ray_helpers import ray_stop

    ray.shutdown()
    ray_stop()
