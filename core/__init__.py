"""pupick core: the framework-agnostic picking engine (no suite knowledge)."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("pupick")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
