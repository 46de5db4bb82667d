"""Bounded ``.npz`` reading: every member's header is checked before any array data is read.

An ``.npz`` is a zip of ``.npy`` files. The zip directory gives each member's uncompressed size
and the ``.npy`` header its dtype and shape, so a file that would expand to more than the memory
budget, hold Python objects, or whose header disagrees with its size is refused after reading a
few hundred bytes, however small the compressed file is. Limits are listed in ``docs/limits.md``.
"""
from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from edge_sdfa.errors import UserError

MAX_MEMBERS = 64                 # arrays in one .npz
MAX_ARRAY_BYTES = 256 << 20      # decompressed bytes of all the arrays of one .npz
ARRAY_KINDS = "biuf"             # bool, signed, unsigned, float: nothing else is read
_MEMBER = re.compile(r"[A-Za-z0-9_.]{1,64}\.npy")


@dataclass(frozen=True)
class ArrayHeader:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    nbytes: int


def read_headers(path: str | os.PathLike, error: type[UserError], *,
                 max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, ArrayHeader]:
    """Headers of every array in the file, checked against the budget; reads no array data."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise error(f"{path}: {len(infos)} arrays, more than the limit of {MAX_MEMBERS}")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes + MAX_MEMBERS * 4096:
                raise error(f"{path}: arrays expand to {declared} bytes, more than the memory budget of "
                            f"{max_bytes} bytes")
            out: dict[str, ArrayHeader] = {}
            for info in infos:
                if not _MEMBER.fullmatch(info.filename) or info.filename[:-4] in out:
                    raise error(f"{path}: unexpected archive member {info.filename[:80]!r} (not an array)")
                name = info.filename[:-4]
                with zf.open(info) as f:
                    shape, fortran, dtype = _parse_header(f, path, name, error)
                    start = f.tell()
                if dtype.hasobject or dtype.kind not in ARRAY_KINDS or dtype.fields is not None:
                    raise error(f"{path}: array {name!r} has dtype {dtype}; only plain numbers are read "
                                "(Python objects/pickles are refused)")
                nbytes = math.prod(shape) * dtype.itemsize
                if info.file_size != start + nbytes:
                    raise error(f"{path}: array {name!r} declares shape {shape} ({nbytes} bytes) but its "
                                f"member holds {info.file_size - start} bytes (truncated or forged)")
                out[name] = ArrayHeader(name, tuple(int(s) for s in shape), dtype, bool(fortran), nbytes)
    except UserError:
        raise
    except FileNotFoundError:
        raise error(f"no such file: {path}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not an .npz file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, SyntaxError, NotImplementedError) as exc:
        if isinstance(exc, OSError) and type(exc) is not OSError and exc.errno is not None:
            raise  # permission denied and the like: the CLI names the path and what to do
        raise error(f"{path}: not a readable .npz file ({str(exc).splitlines()[0][:200]})") from None
    total = sum(h.nbytes for h in out.values())
    if total > max_bytes:
        raise error(f"{path}: arrays hold {total} bytes, more than the memory budget of {max_bytes} bytes")
    return out


def _parse_header(f, path: str, name: str, error: type[UserError]):
    """numpy's own header parser (``ast.literal_eval`` of at most 10,000 characters). Whatever it
    raises on a malformed header (ValueError, SyntaxError, tokenize errors, ...) means the same:
    not an array header."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy version {version}")
    except (zipfile.BadZipFile, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed header, see the docstring
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise error(f"{path}: array {name!r} has no valid .npy header ({detail})") from None


def load_arrays(path: str | os.PathLike, error: type[UserError], names=None, *,
                max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """The arrays ``names`` (default: all) after ``read_headers`` accepted the file."""
    path = os.fspath(path)
    headers = read_headers(path, error, max_bytes=max_bytes)
    wanted = list(headers) if names is None else [n for n in names if n in headers]
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in wanted}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, OSError) and type(exc) is not OSError and exc.errno is not None:
            raise
        raise error(f"{path}: truncated or corrupt .npz file ({str(exc).splitlines()[0][:200]})") from None
