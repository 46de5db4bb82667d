"""Errors a user can cause. The CLI turns them into one line, ``error: ...``, and exit code 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, a file's contents, an option, a missing dependency."""


class BundleError(UserError):
    """A bundle that is missing a file, fails a checksum or signature, or does not match its manifest."""


class DataError(UserError):
    """A data set spec or file that cannot be read."""


class MissingDependency(UserError):
    """An optional dependency that the requested feature needs is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None):
        hint = f"pip install 'edge-sdfa[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the '{package}' package, which is not installed ({hint})")
        self.package = package


def require(module: str, feature: str, extra: str | None = None, package: str | None = None):
    """Import an optional dependency lazily, or raise MissingDependency naming what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(package or module.split(".")[0], feature, extra) from exc
