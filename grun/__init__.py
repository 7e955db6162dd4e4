"""grun: a lightweight job queueing system for private clusters.

    from grun import Client              # jobs: submit, wait, output, kill (grun.client)
    import grun; grun.remote(f, x)       # Python functions on the cluster (grun.calls)

The names below are loaded on first use, so `import grun` (which the command line does) stays cheap
and does not pull in Pyro5 or cloudpickle (nor importlib: `__import__` does the same)."""

__version__ = "0.1.0"

__all__ = ["BadArgument", "CallFuture", "Client", "GrunError", "Job", "JobNotFound", "JobsRefused", "MasterUnreachable",
           "NotSupported", "Reject", "RemoteError", "Timeout", "__version__", "map", "remote", "submit_call"]
_LAZY = {name: "calls" if name in ("CallFuture", "RemoteError", "map", "remote", "submit_call") else
         "job" if name == "Job" else "plugins" if name == "Reject" else "client"
         for name in __all__ if name != "__version__"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'grun' has no attribute {name!r}")
    globals()[name] = value = getattr(__import__(f"grun.{_LAZY[name]}", fromlist=[name]), name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
