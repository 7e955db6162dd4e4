"""Fixtures for the integration tests: real clusters on 127.0.0.1 (cluster.LocalCluster).

`cluster` is shared by the tests of one module, which must leave it as they found it (no daemons
killed, every job they start finished); `fresh_cluster` is for tests that kill or restart daemons.
"""
from __future__ import annotations

import pytest
from cluster import LocalCluster


def _started() -> LocalCluster:
    c = LocalCluster()
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def cluster():
    c = _started()
    yield c
    c.stop()


@pytest.fixture
def fresh_cluster():
    c = _started()
    yield c
    c.stop()
