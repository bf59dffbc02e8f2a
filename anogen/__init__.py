"""anogen: few-shot anomaly image generation with pixel-accurate masks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anogen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
