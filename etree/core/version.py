"""The installed version of etree (``etree --version``, ``etree.__version__``)."""

from importlib import metadata

try:
    __version__ = metadata.version("etree")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
