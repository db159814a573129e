"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012): the paper's network and recipe."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alexnet")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
