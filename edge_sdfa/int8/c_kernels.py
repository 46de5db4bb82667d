"""Ahead-of-time compiled C kernels for the int8 runtime (no numba, no LLVM at run time).

``c_kernels.c`` (plain C99, OpenMP when the compiler has it) implements the same algorithms as
the numba kernels (``fast_kernels``): a padded CSR of each layer's input spikes, the forward
gather of int8 weight rows (int16 sums of 8 rows at a time, at most 255 binary rows per int16
chunk), the neuron dynamics recording the surrogate LUT index, the fused local errors, and the
fused dense update (``sum_t (x_t^T delta_t) << shift_t``, the splitmix64 stochastic rounding of
``arith.apply_update``, int16 master saturation and int8 requantisation; the int64 gradient is
never materialised). Everything is bit-exact with the numpy reference; inputs outside the
kernels' proven integer bounds go to the reference.

On first use the C file is compiled with the system C compiler (``$CC``, sysconfig's ``CC``,
``cc``, ``gcc`` or ``clang``), trying ``-O3 -march=native -fopenmp``, then without
``-march=native``, then without OpenMP, then ``-O2``. The shared library is cached under
``$EDGE_SDFA_CACHE_DIR`` or ``$XDG_CACHE_HOME/edge-sdfa`` (default ``~/.cache/edge-sdfa``), named
by a hash of the source, the compiler (path, size, mtime) and the machine, and written
atomically (temporary file + rename), so the compile happens once per machine and compiler.
A failed compile leaves a ``.failed`` marker with the error, so ``auto`` does not retry it in
every process (an explicit ``c`` request retries). ``load()`` raises ``UserError`` (one line)
when there is no compiler or the compile or the load fails. Unless ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` is set, loading sets ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead
of spinning at barriers: much steadier on a shared device).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith
from edge_sdfa.int8.kernels import NUMPY, Kernels, as_i8, as_u8, matmul_int_ref, outer_acc_ref

ABI_VERSION = 6
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c_kernels.c")
_CHUNK16 = 255
_SG_LUT = np.ascontiguousarray(arith.SG_LUT, dtype=np.int64)
_SG_HALF = arith.SG_RANGE << arith.SG_RES_BITS
assert 2 * _SG_HALF <= 256  # the LUT index fits uint8
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
    ("-O2",),
)
_COMMON = ("-std=c99", "-shared", "-fPIC", "-fno-strict-aliasing")
COMPILE_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------
# build, cache, load


def cache_dir() -> str:
    d = os.environ.get("EDGE_SDFA_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "edge-sdfa")
    return d


def find_compiler() -> list[str] | None:
    """The C compiler command (argv prefix), or None."""
    cands = []
    if os.environ.get("CC"):
        cands.append(os.environ["CC"])
    cc = sysconfig.get_config_var("CC")
    if cc:
        cands.append(cc)
    cands += ["cc", "gcc", "clang"]
    for c in cands:
        try:
            argv = shlex.split(c)
        except ValueError:
            continue
        if argv and shutil.which(argv[0]):
            return [shutil.which(argv[0]), *argv[1:]]
    return None


def _key(compiler: list[str], source: bytes) -> str:
    st = os.stat(compiler[0])
    ident = "\0".join([*compiler, str(st.st_size), str(st.st_mtime_ns), platform.machine(), sys.platform,
                       str(ABI_VERSION), repr(FLAG_SETS), repr(_COMMON)])
    return hashlib.sha256(source + b"\0" + ident.encode()).hexdigest()[:20]


def _writable_dir() -> str:
    for d in (cache_dir(), os.path.join(tempfile.gettempdir(), f"edge-sdfa-{os.getuid() if hasattr(os, 'getuid') else 0}")):
        try:
            os.makedirs(d, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise UserError(f"the C int8 kernels need a writable cache directory (tried {cache_dir()})")


def _compile(compiler: list[str], out_dir: str, name: str) -> tuple[str, str]:
    """Compile into out_dir/name atomically; returns (path, flags used)."""
    errors = []
    for flags in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        cmd = [*compiler, *flags, *_COMMON, "-o", tmp, SOURCE]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            ok = r.returncode == 0
            msg = (r.stderr or r.stdout).strip().splitlines()
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, msg = False, [str(exc)]
        if ok:
            try:
                ctypes.CDLL(tmp)  # e.g. -march=native that compiles but cannot run here
            except OSError as exc:
                ok, msg = False, [str(exc)]
        if ok:
            path = os.path.join(out_dir, name)
            os.replace(tmp, path)
            return path, " ".join(flags)
        errors.append(f"{' '.join(flags)}: {msg[-1] if msg else 'failed'}")
        try:
            os.unlink(tmp)
        except OSError:
            pass
    raise UserError("compiling the C int8 kernels failed: " + "; ".join(errors))


_LIB = None
_INFO: dict = {}


def load(retry_failed: bool = True):
    """The loaded library (compiled on first use), or UserError with one line."""
    global _LIB
    if _LIB is not None:
        return _LIB
    compiler = find_compiler()
    if compiler is None:
        raise UserError("the C int8 kernels need a C compiler (cc, gcc or clang on PATH, or $CC); none found")
    try:
        with open(SOURCE, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise UserError(f"the C int8 kernels' source is missing: {exc}") from None
    key = _key(compiler, source)
    name = f"c_kernels-{key}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    path = None
    for d in (cache_dir(), os.path.join(tempfile.gettempdir(), f"edge-sdfa-{os.getuid() if hasattr(os, 'getuid') else 0}")):
        if os.path.exists(os.path.join(d, name)):
            path = os.path.join(d, name)
            break
    if path is None:
        out_dir = _writable_dir()
        marker = os.path.join(out_dir, name + ".failed")
        if os.path.exists(marker) and not retry_failed:
            with open(marker, encoding="utf-8", errors="replace") as f:
                raise UserError(f.read().strip().splitlines()[0] if os.path.getsize(marker) else "compile failed")
        try:
            path, flags = _compile(compiler, out_dir, name)
        except UserError as exc:
            try:
                with open(marker, "w", encoding="utf-8") as f:
                    f.write(str(exc).replace("\n", " ") + "\n")
            except OSError:
                pass
            raise
        _INFO["compiled_flags"] = flags
        try:
            os.unlink(marker)
        except OSError:
            pass
    if not any(v in os.environ for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        # libgomp spins at its barriers by default; on a busy 2-core machine a spinning thread
        # waits for a descheduled one (measured 40-68 ms per update vs 43-45 ms passive with
        # other processes busy; no difference on a quiet one). Read when libgomp is loaded, so
        # it only takes effect if nothing in this process loaded libgomp before.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        lib = _open(path)
    except (OSError, AttributeError) as exc:
        if not retry_failed or "compiled_flags" in _INFO:
            raise UserError(f"loading the C int8 kernels ({path}) failed: {exc}") from None
        try:  # a damaged cache entry: rebuild it once
            os.unlink(path)
            path, _INFO["compiled_flags"] = _compile(compiler, _writable_dir(), name)
            lib = _open(path)
        except (OSError, AttributeError) as exc2:
            raise UserError(f"loading the C int8 kernels ({path}) failed: {exc2}") from None
    _declare(lib)
    _INFO["path"] = path
    _LIB = lib
    return lib


def _open(path: str):
    lib = ctypes.CDLL(path)
    if lib.esd_abi_version() != ABI_VERSION:
        raise OSError(f"ABI version {lib.esd_abi_version()} != {ABI_VERSION}")
    return lib


def _declare(lib) -> None:
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    sig = {
        "esd_num_threads": (I, []),
        "esd_row_counts": (I64, [P, I64, I64, P]),
        "esd_csr_fill": (None, [P, I64, I64, P, P, P, I]),
        "esd_csc": (I, [P, P, P, P, I, I64, I64, I64, P, P, P]),
        "esd_gather": (I, [P, P, P, P, I, P, I64, I64, I64, P]),
        "esd_outer_steps": (I, [P, P, P, I, P, I64, I64, I64, I64, P, I, I64, I64, P]),
        "esd_dense_update": (I, [P, P, P, I, P, I64, I64, I64, I64, P, I, I64, P, I64, I64, ctypes.c_uint64, I64,
                                 P, P, P]),
        "esd_neuron_run": (I, [P, I, I64, I64, I64, I, I, I, I64, I64, I64, I, I64, I64, P, P, P]),
        "esd_local_deltas": (I, [P, I, P, I, I64, I64, P, I64, I64, I64, I64, I64, P, I64, P, P]),
        "esd_exact_deltas": (I, [P, P, I64, I64, I64, P, P, I64, P, P]),
    }
    for fname, (res, args) in sig.items():
        fn = getattr(lib, fname)
        fn.restype = res
        fn.argtypes = args


def num_threads() -> int:
    return int(load().esd_num_threads())


def info() -> dict:
    """Where the library is and, if compiled in this process, with which flags."""
    load()
    return dict(_INFO, threads=num_threads())


def _p(a: np.ndarray) -> int:
    return a.ctypes.data


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise MemoryError(f"C int8 kernel {what}: out of memory")


# ---------------------------------------------------------------------------------------------
# sparse structure of the spikes


class SpikeIndex:
    """Sparse views of spikes ``x[T, N, K]`` (uint8): padded CSR rows (forward gather) and, on
    demand, per-step columns (weight-gradient scatter)."""

    def __init__(self, x3: np.ndarray):
        lib = load()
        self.shape = x3.shape
        t_n, n_n, k_n = x3.shape
        r_n = t_n * n_n
        x2 = np.ascontiguousarray(x3).reshape(r_n, k_n)
        counts = np.empty(r_n, np.int64)
        vmax = lib.esd_row_counts(_p(x2), r_n, k_n, _p(counts)) if r_n else 0
        self.binary = bool(vmax <= 1)
        self.starts = np.zeros(r_n, np.int64)
        if r_n > 1:
            np.cumsum(counts[:-1] + 1, out=self.starts[1:])
        self.ends = self.starts + counts
        total = int(self.starts[-1] + counts[-1] + 1) if r_n else 1
        self.nnz = int(counts.sum())
        self.idx = np.empty(total, np.int32)
        self.val = np.empty(total if not self.binary else 1, np.uint8)
        if r_n and k_n:
            lib.esd_csr_fill(_p(x2), r_n, k_n, _p(self.starts), _p(self.idx), _p(self.val), int(self.binary))
        self._csc = None

    def csc(self):
        if self._csc is None:
            t_n, n_n, k_n = self.shape
            ptr = np.empty(t_n * k_n + 1, np.int64)
            smp = np.empty(max(self.nnz, 1), np.int32)
            sval = np.empty(max(self.nnz, 1) if not self.binary else 1, np.uint8)
            _check(load().esd_csc(_p(self.starts), _p(self.ends), _p(self.idx), _p(self.val), int(self.binary),
                                  t_n, n_n, k_n, _p(ptr), _p(smp), _p(sval)), "csc")
            self._csc = ptr, smp, sval
        return self._csc

    def max_per_column(self) -> int:
        ptr = self.csc()[0]  # input-major: ptr[k * T + t]
        return int(np.diff(ptr).max()) if ptr.size > 1 else 0


def spike_index(x: np.ndarray, t_steps: int, n: int) -> SpikeIndex | None:
    """The sparse index of spikes ``x`` (``[T*N, K]`` or ``[T, N, K]``), or None when x is not
    uint8-representable or the int32 gather bound cannot hold (the caller uses the reference)."""
    xu = as_u8(x)
    if xu is None or xu.size == 0:
        return None
    x3 = xu.reshape(t_steps, n, -1)
    if x3.shape[2] * 255 * 128 >= (1 << 31) or t_steps * n >= (1 << 31):
        return None
    return SpikeIndex(x3)


# ---------------------------------------------------------------------------------------------
# forward

GATHER_TILE = int(os.environ.get("EDGE_SDFA_C_GATHER_TILE", "0"))   # 0: all columns at once
UPDATE_TILE = int(os.environ.get("EDGE_SDFA_C_UPDATE_TILE", "0"))


def matmul_index(index: SpikeIndex, w: np.ndarray, small: bool = False) -> np.ndarray:
    """Exact ``x @ w`` for the spikes of ``index`` and int8 ``w[K, M]``: int32 with ``small``
    (K * 255 * 128 < 2**30, as the numba kernels), else int64."""
    wi = as_i8(w)
    t_n, n_n, k_n = index.shape
    if wi is None or wi.ndim != 2 or wi.shape[0] != k_n:
        raise ValueError(f"matmul_index: weights {w.shape} {w.dtype} do not fit spikes {index.shape}")
    m_n = wi.shape[1]
    out = np.empty((t_n * n_n, m_n), np.int32)
    if out.size:
        _check(load().esd_gather(_p(index.starts), _p(index.ends), _p(index.idx), _p(index.val), int(index.binary),
                                 _p(wi), t_n * n_n, m_n, GATHER_TILE, _p(out)), "gather")
    if small and k_n * 255 * 128 < (1 << 30):
        return out
    return out.astype(np.int64)


def matmul_int(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x @ w`` (int64) for spikes/counts ``x[R, K]`` and int8 ``w[K, M]``."""
    xu, wi = as_u8(x), as_i8(w)
    if xu is None or wi is None or x.ndim != 2 or w.ndim != 2:
        return matmul_int_ref(x, w)
    if xu.shape[1] != wi.shape[0]:
        raise ValueError(f"matmul_int: shapes {x.shape} and {w.shape} do not align")
    if xu.size == 0:
        return np.zeros((xu.shape[0], wi.shape[1]), np.int64)
    index = spike_index(xu, 1, xu.shape[0])
    if index is None:
        return matmul_int_ref(x, w)
    return matmul_index(index, wi)


# ---------------------------------------------------------------------------------------------
# weight gradient and the fused update


def _int32_plan(index: SpikeIndex, shifts: np.ndarray) -> tuple[bool, int]:
    """(use32, s_min): whether the per-step sums of one input's error rows can be added in int32
    at the smallest shift without overflow (binary spikes, at most 255 samples per step)."""
    if not index.binary or shifts.size == 0:
        return False, 0
    per = index.max_per_column()
    if per > _CHUNK16:
        return False, 0
    s_min = int(shifts.min())
    bound = sum((per * 128) << int(s - s_min) for s in shifts)
    return bound < (1 << 31), s_min


def _grad_bound_ok(index: SpikeIndex, shifts: np.ndarray) -> bool:
    """The int64 gradient (and the int32 per-step sums of binary spikes) cannot wrap."""
    t_n, n_n, _ = index.shape
    if n_n * 255 * 128 >= (1 << 31):
        return False
    vmax = 1 if index.binary else 255
    return n_n * vmax * 128 * sum(1 << int(s) for s in shifts) < (1 << 63)


def outer_acc_steps(x: np.ndarray, d: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``sum_t (x_t^T d_t) << shift_t`` (int64 [K, M]) for x[T, R, K] and int8 d[T, R, M]."""
    shifts = np.ascontiguousarray(shifts, dtype=np.int64)
    if (shifts < 0).any():
        raise ValueError("negative shift")
    xu, di = as_u8(x), as_i8(d)
    index = None
    if xu is not None and di is not None and x.ndim == 3 and d.ndim == 3 and not (shifts > 62).any() \
            and xu.size and di.shape[2] and xu.shape[:2] == di.shape[:2]:
        index = spike_index(xu, xu.shape[0], xu.shape[1])
        if index is not None and not _grad_bound_ok(index, shifts):
            index = None
    if index is None:
        from edge_sdfa.int8.net import outer_acc_steps_ref

        return outer_acc_steps_ref(NUMPY, x, d, shifts)
    t_n, n_n, k_n = index.shape
    m_n = di.shape[2]
    out = np.empty((k_n, m_n), np.int64)
    ptr, smp, sval = index.csc()
    use32, s_min = _int32_plan(index, shifts)
    _check(load().esd_outer_steps(_p(ptr), _p(smp), _p(sval), int(index.binary), _p(di), t_n, n_n, k_n, m_n,
                                  _p(shifts), int(use32), s_min, UPDATE_TILE, _p(out)), "outer_steps")
    return out


def outer_acc(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Exact ``x.T @ d`` (int64 [K, M]) for x[R, K] and int8 d[R, M]."""
    if x.ndim != 2 or d.ndim != 2 or as_u8(x) is None or as_i8(d) is None:
        return outer_acc_ref(x, d)
    return outer_acc_steps(x[None], d[None], np.zeros(1, np.int64))


def dense_update(x: np.ndarray, d: np.ndarray, shifts: np.ndarray, master: np.ndarray, m: int, k: int,
                 key: int, index: SpikeIndex | None = None):
    """The fused dense update of ``net.sdfa_update`` (see ``fast_kernels.dense_update``):
    ``(master, w8, saturated_master, saturated_w8)``, or None when the reference must run."""
    shifts = np.ascontiguousarray(shifts, dtype=np.int64)
    di = as_i8(d)
    if (di is None or x.ndim != 3 or d.ndim != 3 or master.dtype != np.int16
            or master.ndim != 2 or (shifts < 0).any() or (shifts > 62).any()
            or not 0 <= k <= 62 or not 0 <= m < (1 << 62)):
        return None
    k_n, m_n = master.shape
    if x.shape[2] != k_n or di.shape[2] != m_n or x.shape[:2] != di.shape[:2]:
        raise ValueError(f"dense_update: shapes x{x.shape} d{d.shape} master{master.shape} do not align")
    if not isinstance(index, SpikeIndex):
        xu = as_u8(x)
        if xu is None:
            return None
        if xu.size == 0:
            w8 = arith.w8_from_master(master)
            return master.copy(), w8, 0, int(np.count_nonzero(np.abs(w8) == 127))
        index = spike_index(xu, xu.shape[0], xu.shape[1])
        if index is None:
            return None
    if index.shape != x.shape or not _grad_bound_ok(index, shifts):
        return None
    t_n, n_n, _ = index.shape
    master = np.ascontiguousarray(master)
    new_master = np.empty_like(master)
    new_w8 = np.empty((k_n, m_n), np.int8)
    sat = np.zeros(2, np.int64)
    if master.size:
        ptr, smp, sval = index.csc()
        use32, s_min = _int32_plan(index, shifts)
        _check(load().esd_dense_update(_p(ptr), _p(smp), _p(sval), int(index.binary), _p(di), t_n, n_n, k_n, m_n,
                                       _p(shifts), int(use32), s_min, _p(master), int(m), int(k),
                                       int(key) & ((1 << 64) - 1), UPDATE_TILE, _p(new_master), _p(new_w8),
                                       _p(sat)), "dense_update")
    return new_master, new_w8, int(sat[0]), int(sat[1])


# ---------------------------------------------------------------------------------------------
# neurons and local errors


def neuron_run(neuron, const: dict, cur: np.ndarray, want_h: bool = True, sg_exp: int | None = None):
    """Spikes (uint8) and, with ``want_h``, membranes h (int64), or with ``sg_exp`` the surrogate
    LUT index of ``h - vth`` (uint8), of ``cur[T, N, M]`` from rest (``arith.neuron_step_int``)."""
    if cur.dtype not in (np.int32, np.int64):
        cur = cur.astype(np.int64)
    cur = np.ascontiguousarray(cur)
    t_n, n_n, m_n = cur.shape
    spikes = np.empty(cur.shape, np.uint8)
    want = 0 if not want_h else (2 if sg_exp is not None else 1)
    hs = np.empty(cur.shape if want == 1 else (1,), np.int64)
    sgi = np.empty(cur.shape if want == 2 else (1,), np.uint8)
    sg_shift = (sg_exp if sg_exp is not None else 0) - arith.SG_RES_BITS
    if cur.size:
        _check(load().esd_neuron_run(_p(cur), int(cur.dtype == np.int32), t_n, n_n, m_n,
                                     0 if neuron.kind == "lif" else 1, int(bool(neuron.decay_input)),
                                     int(neuron.v_reset is None), int(const["vth"]), int(const["vreset"]),
                                     int(const["decay"]), want, int(sg_shift), _SG_HALF, _p(spikes), _p(hs),
                                     _p(sgi)), "neuron_run")
    return spikes, (hs if want == 1 else sgi if want == 2 else None)


def _local_deltas_ref(h, e, vth, exp, b, from_index):
    g = e if b is None else np.stack([e[t].astype(np.int64) @ b.astype(np.int64) for t in range(e.shape[0])])
    deltas = np.empty(h.shape, np.int8)
    shifts = np.zeros(h.shape[0], np.int64)
    for t in range(h.shape[0]):
        sg = _SG_LUT[h[t]] if from_index else arith.surrogate_q(h[t], vth, exp)
        deltas[t], shifts[t] = arith.to_int8_dynamic(g[t] * sg)
    return deltas, shifts


def local_deltas(h: np.ndarray, e: np.ndarray, vth: int, exp: int, b: np.ndarray | None = None,
                 from_index: bool = False):
    """(int8 deltas [T, N, M], shifts [T]) as ``net.local_deltas`` computes them from ``g = e @ b``
    (``b``: a hidden layer's int8 feedback) or ``g = e``; ``from_index``: h is the LUT index."""
    project = b is not None
    e_max = int(np.abs(e).max()) if e.size else 0
    b_max = int(np.abs(b.astype(np.int64)).max()) if project and b.size else 1
    lut_max = int(_SG_LUT.max())
    g_bound = e.shape[-1] * e_max * b_max if project else e_max
    if g_bound * lut_max >= (1 << 62) or (not from_index and h.dtype.kind not in "iu"):
        return _local_deltas_ref(h, e, vth, exp, b, from_index)
    if from_index:
        h = np.ascontiguousarray(h, dtype=np.uint8)
    else:
        h = np.ascontiguousarray(h, dtype=np.int64)
    t_n, n_n, m_n = h.shape
    if e.ndim == 3 and e.shape[0] == t_n and e.shape[0] > 1 and e.strides[0] == 0:
        e = e[:1]  # the same error at every step (exact mode): do not materialise it
    small = g_bound < (1 << 31)  # the projection is exact in int32 (32x32->64 products with the LUT)
    dt = np.int32 if small else np.int64
    e = np.ascontiguousarray(e, dtype=dt)
    bb = np.ascontiguousarray(b, dtype=dt) if project else None
    if not project and e.shape[2] != m_n:
        raise ValueError(f"local_deltas: errors {e.shape} do not fit membranes {h.shape}")
    deltas = np.empty(h.shape, np.int8)
    shifts = np.zeros(t_n, np.int64)
    if h.size:
        _check(load().esd_local_deltas(_p(h), int(from_index), _p(e), int(small), e.shape[0], e.shape[2],
                                       _p(bb) if project else None, t_n, n_n, m_n, int(vth),
                                       int(exp - arith.SG_RES_BITS), _p(_SG_LUT), _SG_HALF, _p(deltas),
                                       _p(shifts)), "local_deltas")
    return deltas, shifts


def exact_deltas(idx: np.ndarray, g: np.ndarray, carry: np.ndarray):
    """``arith.exact_deltas(idx, g, carry)``: the exact rule's BPTT eligibility and int8 deltas,
    or None (the reference then raises) where ``|g|`` exceeds ``arith.G_LIMIT``."""
    g = np.ascontiguousarray(g, dtype=np.int64)
    if g.size and int(np.abs(g).max()) > arith.G_LIMIT:
        return None
    idx = np.ascontiguousarray(idx, dtype=np.uint8)
    t_n, n_n, m_n = idx.shape
    if g.shape != (n_n, m_n):
        raise ValueError(f"exact_deltas: errors {g.shape} do not fit bins {idx.shape}")
    carry = np.ascontiguousarray(carry, dtype=np.int64)
    deltas = np.empty(idx.shape, np.int8)
    shifts = np.zeros(t_n, np.int64)
    if idx.size:
        _check(load().esd_exact_deltas(_p(idx), _p(g), t_n, n_n, m_n, _p(_SG_LUT), _p(carry), _SG_HALF,
                                       _p(deltas), _p(shifts)), "exact_deltas")
    return deltas, shifts


KERNELS = Kernels("c", matmul_int, outer_acc, outer_acc_steps, dense_update=dense_update,
                  neuron_run=neuron_run, local_deltas=local_deltas, spike_index=spike_index,
                  matmul_index=matmul_index, surrogate_index=True, exact_deltas=exact_deltas)


def get(retry_failed: bool = True) -> Kernels:
    """The C kernels after a successful build/load (UserError otherwise)."""
    load(retry_failed)
    return KERNELS
