"""grun: a lightweight job queueing system for private clusters.

This module owns only the package version; everything else lives in the submodules.
"""

__version__ = "0.1.0"
