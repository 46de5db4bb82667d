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


_OS_HINTS = {
    "EROFS": "the file system is read-only; use a writable location (e.g. --store DIR) or remount it read-write",
    "EACCES": "permission denied; check the permissions or use another location",
    "EPERM": "operation not permitted; check the permissions or use another location",
    "ENOSPC": "no space left on the device; free some space and run the command again",
    "EDQUOT": "disk quota exceeded; free some space and run the command again",
    "ENOENT": "no such file or directory; check the path",
    "ENOTDIR": "a part of the path is not a directory; check the path",
    "EISDIR": "is a directory, a file was expected; check the path",
    "EEXIST": "already exists; remove it or choose another path",
    "ENOTEMPTY": "directory not empty; remove it or choose another path",
    "ENXIO": "the device or port is gone; reconnect it and run the command again",
    "ENODEV": "the device or port is gone; reconnect it and run the command again",
    "EIO": "input/output error; the device or port may be gone or failing; reconnect it and retry",
    "EBUSY": "the device or file is busy; close what uses it and retry",
    "EMFILE": "too many open files; close some programs and retry",
    "ENAMETOOLONG": "file name too long; use a shorter path",
}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: the path, what went wrong and what to do."""
    import errno

    code = errno.errorcode.get(exc.errno or 0, "")
    where = exc.filename if exc.filename is not None else None
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    hint = _OS_HINTS.get(code) or (exc.strerror or str(exc) or type(exc).__name__)
    text = f"{where}: {hint}" if where is not None else hint
    return " ".join(text.split())


class naming:
    """``with naming(path): ...``: an OSError raised inside without a file name (a failed
    ``write`` or ``fsync`` on an open file: disk full, I/O error) gets ``path`` as its file name,
    so the one-line message says where."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or "", str(self.path)) from exc
        return False
