"""grun: a lightweight job queueing system for private clusters.

    from grun import Client              # jobs: submit, wait, output, kill (grun.client)
    import grun; grun.remote(f, x)       # Python functions on the cluster (grun.calls)

The names below are loaded on first use, so `import grun` (which the command line does) stays cheap
and does not pull in Pyro5 or cloudpickle.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Client": "client", "Job": "client", "GrunError": "client", "MasterUnreachable": "client",
    "JobNotFound": "client", "NotSupported": "client", "Timeout": "client",
    "remote": "calls", "submit_call": "calls", "map": "calls", "RemoteError": "calls",
    "CallFuture": "calls",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grun' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
