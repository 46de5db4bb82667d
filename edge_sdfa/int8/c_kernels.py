"""The C kernel set: the numpy set's entry points (``reference``) in C, bit-exact with it.

``c_kernels.c`` (C99, a small POSIX thread pool whose idle workers sleep) is compiled when the package is installed
(``setup.py``: ``build_ext`` with the system C compiler, honouring ``CC``/``CFLAGS``) into the
shared library ``_c_kernels*.so`` next to this file, loaded here with ctypes. Nothing is compiled
at run time and nothing in the process environment is changed; where the install could not build
the library, ``available()`` raises a one-line ``UserError`` and ``kernels.get("auto")`` runs the
numpy set. On x86-64 the hot loops are compiled for several instruction sets and picked at load
time (GCC ``target_clones``); on aarch64 they use the baseline armv8-a NEON.

The algorithms: a padded CSR of each layer's input spikes (``prepare_inputs``), the forward
gather of int8 weight rows (int16 sums of 8 rows at a time, at most 255 binary rows per int16
chunk), the neuron dynamics recording the surrogate LUT index, the fused local errors, and the
fused dense update (``sum_t (x_t^T delta_t) << shift_t``, the splitmix64 stochastic rounding of
``arith.apply_update``, int16 master saturation and int8 requantisation; the int64 gradient is
never materialised). Inputs outside the kernels' proven integer bounds go to ``reference``.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import os

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith, reference

NAME = "c"
ABI_VERSION = 10
LIBRARY_STEM = "_c_kernels"
_CHUNK16 = 255
_SG_LUT = np.ascontiguousarray(arith.SG_LUT, dtype=np.int64)
_SG_HALF = arith.SG_RANGE << arith.SG_RES_BITS
assert 2 * _SG_HALF <= 256  # the LUT index fits uint8


# ---------------------------------------------------------------------------------------------
# the shipped library


def library_path() -> str | None:
    """The library built at install time, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, LIBRARY_STEM + suffix)
        if os.path.exists(path):
            return path
    found = sorted(glob.glob(os.path.join(here, LIBRARY_STEM + "*.so")))  # e.g. a cross build's suffix
    return found[0] if found else None


_LIB = None
_ERROR: UserError | None = None
THREADS_ENV = "EDGE_SDFA_THREADS"  # read, never set: threads of the C kernels (default: CPUs online)


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise UserError(f"{THREADS_ENV}={text!r} is not a number of threads") from None
    if n < 0:
        raise UserError(f"{THREADS_ENV} must be >= 0 (0: one per CPU), got {n}")
    return n


def load():
    """The loaded library, or UserError with one line."""
    global _LIB, _ERROR
    if _LIB is not None:
        return _LIB
    if _ERROR is None:
        path = library_path()
        if path is None:
            _ERROR = UserError("the C int8 kernels were not built when edge-sdfa was installed (no C "
                               "compiler then?); reinstall with a C compiler to get them")
        else:
            try:
                lib = ctypes.CDLL(path)
                missing = missing_cpu_features(built_features(lib))
                if missing:
                    raise CpuMismatch(f"the C int8 kernels ({os.path.basename(path)}) were built for CPU "
                                      f"features this CPU lacks ({', '.join(missing)}); reinstall on this "
                                      "machine to rebuild them")
                if lib.esd_abi_version() != ABI_VERSION:
                    raise OSError(f"ABI version {lib.esd_abi_version()} != {ABI_VERSION}")
                _declare(lib)
                threads = os.environ.get(THREADS_ENV, "")
                if threads.strip():
                    lib.esd_set_num_threads(_threads(threads))
                _LIB = lib
                return lib
            except CpuMismatch as exc:
                _ERROR = exc
            except (OSError, AttributeError) as exc:
                _ERROR = UserError(f"loading the C int8 kernels ({path}) failed: {exc}")
    raise type(_ERROR)(str(_ERROR))


class CpuMismatch(UserError):
    """The library was compiled for CPU features the running CPU lacks (calling it would SIGILL)."""

    warn_on_fallback = True  # kernels.get("auto") says so on stderr when it runs numpy instead


# aarch64 Linux HWCAP bits (asm/hwcap.h) of the features esd_built_features may name
_AARCH64_HWCAP = {"atomics": 8, "asimdhp": 10, "asimdrdm": 12, "asimddp": 20, "sve": 22}
_AARCH64_HWCAP2 = {"sve2": 1, "i8mm": 13}


def built_features(lib) -> list[str]:
    """The CPU features the library's compiler flags enabled (a data symbol: no library code runs)."""
    try:
        return ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(lib, "esd_built_features"))).decode().split()
    except ValueError:  # an older library without the symbol: the ABI check refuses it
        return []


def cpu_features() -> set[str] | None:
    """The running CPU's features, named as in /proc/cpuinfo: aarch64 from ``getauxval(AT_HWCAP)``
    (what the kernel, or qemu-user, reports for this process), else the cpuinfo flags; None when
    unknown (then nothing is refused)."""
    import platform

    if platform.machine() in ("aarch64", "arm64"):
        try:
            libc = ctypes.CDLL(None)
            libc.getauxval.restype = ctypes.c_ulong
            libc.getauxval.argtypes = [ctypes.c_ulong]
            hw, hw2 = int(libc.getauxval(16)), int(libc.getauxval(26))  # AT_HWCAP, AT_HWCAP2
        except (OSError, AttributeError):
            return None
        return ({name for name, bit in _AARCH64_HWCAP.items() if hw >> bit & 1}
                | {name for name, bit in _AARCH64_HWCAP2.items() if hw2 >> bit & 1})
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


def missing_cpu_features(built: list[str]) -> list[str]:
    """Features the library was built for that this CPU lacks (empty when unknown)."""
    have = cpu_features()
    return [] if have is None else [f for f in built if f not in have]


def available() -> None:
    """UserError (one line) unless the library loads."""
    load()


def _declare(lib) -> None:
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    sig = {
        "esd_num_threads": (I, []),
        "esd_set_num_threads": (None, [I]),
        "esd_set_call_threads": (I, [I]),
        "esd_row_counts": (I64, [P, I64, I64, P]),
        "esd_csr_fill": (None, [P, I64, I64, P, P, P, I]),
        "esd_spike_bits": (None, [P, I, I64, I64, I64, I64, P, P]),
        "esd_gather": (I, [P, P, P, P, I, P, I64, I64, I64, P]),
        "esd_dense_update": (I, [P, I64, P, I, P, I64, I64, I64, I64, P, I, I64, P, I64, I64, ctypes.c_uint64, I64,
                                 P, P]),
        "esd_neuron_run": (I, [P, I, I64, I64, I64, I, I, I, I64, I64, I64, I, I64, I64, P, P, P]),
        "esd_dense_forward": (I, [P, I, I64, I64, I64, I64, P, P, I, I, I, I64, I64, I64, I, I64, I64, P, P]),
        "esd_local_deltas": (I, [P, I, P, I, I64, I64, P, I64, I64, I64, I64, I64, P, I64, P, P]),
        "esd_exact_deltas": (I, [P, P, I64, I64, I64, P, P, I64, P, P]),
        "esd_int16_peak": (I64, [I64, P]),
        "esd_dense_stack": (I, [P, I64, I64, I64, I64, P, P, P, I64, I64, P]),
        "esd_conv_current": (I, [P, I64, I64, I64, I64, P, I64, I64, I64, I64, I64, I64, P]),
    }
    for fname, (res, args) in sig.items():
        fn = getattr(lib, fname)
        fn.restype = res
        fn.argtypes = args


def info() -> dict:
    """Where the library is and how many threads its parallel loops use."""
    return {"path": library_path(), "threads": int(load().esd_num_threads())}


def _p(a: np.ndarray) -> int:
    return a.ctypes.data


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise MemoryError(f"C int8 kernel {what}: out of memory")


def as_u8(x: np.ndarray) -> np.ndarray | None:
    """x as a C-contiguous uint8 array with the same values, or None if it does not fit."""
    if x.dtype == np.uint8 or x.dtype == np.bool_:
        return np.ascontiguousarray(x).view(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        return None
    if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
        return None
    return np.ascontiguousarray(x, dtype=np.uint8)


def as_i8(a: np.ndarray) -> np.ndarray | None:
    """a as a C-contiguous int8 array with the same values, or None if it does not fit."""
    if a.dtype == np.int8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        return None
    if a.size and (int(a.min()) < -128 or int(a.max()) > 127):
        return None
    return np.ascontiguousarray(a, dtype=np.int8)


# ---------------------------------------------------------------------------------------------
# sparse structure of the spikes


class SpikeIndex:
    """Sparse views of spikes ``x[T, N, K]`` (uint8), each built on first use: padded CSR rows
    (``csr``: the layer-by-layer forward gather) and a per-(step, input) bitmap of the samples
    (``bits``: the weight gradient, built from ``x`` directly). ``x`` keeps the array itself."""

    def __init__(self, x3: np.ndarray, mask: int = 0):
        self._raw = x3
        self.mask = mask  # nonzero: binary spikes where raw & mask (a layer's surrogate indices)
        self.shape = x3.shape
        self._csr = None
        self._bits = None

    @property
    def x(self) -> np.ndarray:
        """The spikes as an array (built anew from the surrogate indices where ``mask`` is set)."""
        if not self.mask:
            return self._raw
        return (self._raw & np.uint8(self.mask) != 0).view(np.uint8)

    def csr(self):
        """(starts, ends, idx, val, binary): row r's nonzeros at idx[starts[r]:ends[r]]."""
        if self._csr is None:
            lib = load()
            t_n, n_n, k_n = self.shape
            r_n = t_n * n_n
            x2 = np.ascontiguousarray(self.x).reshape(r_n, k_n)
            counts = np.empty(r_n, np.int64)
            vmax = int(lib.esd_row_counts(_p(x2), r_n, k_n, _p(counts))) if r_n else 0
            binary = vmax <= 1
            starts = np.zeros(r_n, np.int64)
            if r_n > 1:
                np.cumsum(counts[:-1] + 1, out=starts[1:])
            ends = starts + counts
            total = int(starts[-1] + counts[-1] + 1) if r_n else 1
            idx = np.empty(total, np.int32)
            val = np.empty(total if not binary else 1, np.uint8)
            if r_n and k_n:
                lib.esd_csr_fill(_p(x2), r_n, k_n, _p(starts), _p(idx), _p(val), int(binary))
            self._csr = starts, ends, idx, val, binary
        return self._csr

    def bits(self):
        """(bits, words, vmax, most): the weight gradient's index, a bitmap ``bits[T, words, K]``
        (uint64, bit n % 64 of ``[t, n // 64, k]`` set where ``x[t, n, k] != 0``), the largest
        value of x, and the most samples of one (step, input)."""
        if self._bits is None:
            t_n, n_n, k_n = self.shape
            words = max(1, (n_n + 63) // 64)
            bits = np.zeros((t_n, words, k_n), np.uint64)
            stats = np.zeros((t_n, 3), np.int64)
            load().esd_spike_bits(_p(self._raw), self.mask, t_n, n_n, k_n, words, _p(bits), _p(stats))
            wide = bool(stats[:, 0].any())
            vmax = int(self._raw.max()) if wide else int(stats[:, 2].sum() > 0)
            self._bits = bits, words, vmax, int(stats[:, 1].max(initial=0))
        return self._bits

    @property
    def vmax(self) -> int:
        return self.bits()[2]

    @property
    def binary(self) -> bool:
        return self.vmax <= 1

    def max_per_column(self) -> int:
        return self.bits()[3]


_SPIKE_MASK = 0xFF & ~(_SG_HALF - 1)  # index >= half: one of these bits is set
assert _SG_HALF & (_SG_HALF - 1) == 0 and _SG_HALF <= 128


def spikes_from_surrogate(sg: np.ndarray):
    """A layer's spikes read from its surrogate LUT indices ``sg[T, N, M]`` (uint8), for the next
    layer: a spike is ``index >= half`` (``h >= vth``), so the [T, N, M] spike array need not
    exist. A SpikeIndex over ``sg`` (prepare_inputs of the spikes), or the spike array itself
    outside the C bounds."""
    view = SpikeIndex(sg, _SPIKE_MASK)
    if sg.shape[2] * 255 * 128 >= (1 << 31) or sg.shape[0] * sg.shape[1] >= (1 << 31):
        return view.x
    return view


def prepare_inputs(x: np.ndarray):
    """A SpikeIndex of ``x[T, N, K]``, or the array itself where the C kernels' bounds do not hold
    (not uint8-representable, or the int32 gather could overflow): the numpy set then runs."""
    xu = as_u8(x)
    if xu is None or xu.size == 0 or x.ndim != 3:
        return np.asarray(x)
    if x.shape[2] * 255 * 128 >= (1 << 31) or x.shape[0] * x.shape[1] >= (1 << 31):
        return np.asarray(x)
    return SpikeIndex(xu)  # cheap: the sparse views are built when a kernel needs them


def _array(inputs) -> np.ndarray:
    return inputs.x if isinstance(inputs, SpikeIndex) else inputs


# ---------------------------------------------------------------------------------------------
# forward

GATHER_TILE = 0   # columns per tile of the gather (0: all at once)
UPDATE_TILE = 0


def _plus_bias(out: np.ndarray, terms: int, bias: np.ndarray | None) -> np.ndarray:
    """int32 currents of ``terms`` int8 x uint8 products plus bias: kept int32 while the sum is
    provably below 2**31, else widened to int64 first."""
    if terms * 255 * 128 >= (1 << 30) or (bias is not None and int(np.abs(bias).max(initial=0)) >= (1 << 30)):
        out = out.astype(np.int64)
    if bias is not None:
        out += bias.astype(out.dtype)
    return out


def dense_current(inputs, w8: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Exact ``x @ w8 + bias``: int32 where ``K * 255 * 128 + |bias| < 2**31``, else int64."""
    wi = as_i8(w8)
    if not isinstance(inputs, SpikeIndex) or wi is None or wi.ndim != 2:
        return reference.dense_current(_array(inputs), w8, bias)
    t_n, n_n, k_n = inputs.shape
    if wi.shape[0] != k_n:
        raise ValueError(f"dense_current: weights {w8.shape} do not fit inputs {inputs.shape}")
    m_n = wi.shape[1]
    out = np.empty((t_n * n_n, m_n), np.int32)
    if out.size:
        starts, ends, idx, val, binary = inputs.csr()
        _check(load().esd_gather(_p(starts), _p(ends), _p(idx), _p(val), int(binary), _p(wi), t_n * n_n, m_n,
                                 GATHER_TILE, _p(out)), "gather")
    return _plus_bias(out, k_n, bias).reshape(t_n, n_n, m_n)


def conv_current(x: np.ndarray, w8: np.ndarray, bias: np.ndarray | None, stride: int, padding: int) -> np.ndarray:
    """``reference.conv_current`` in C (``esd_conv_current``) without a patch matrix: each input
    spike adds its weight rows to the outputs it reaches, so the work follows the spikes. The reference runs outside the C
    bounds (inputs not uint8, weights not int8, ``C * k * k * 255 * 128 >= 2**31``)."""
    xu, wi = as_u8(x), as_i8(w8)
    if xu is None or wi is None or x.ndim != 4 or wi.ndim != 4 or wi.shape[2] != wi.shape[3]:
        return reference.conv_current(x, w8, bias, stride, padding)
    r_n, c_n, h, w = xu.shape
    o_n, c_w, k = wi.shape[0], wi.shape[1], wi.shape[2]
    if c_w != c_n:
        raise ValueError(f"conv_current: weights {w8.shape} do not fit inputs {x.shape}")
    if c_n * k * k * 255 * 128 >= (1 << 31):
        return reference.conv_current(x, w8, bias, stride, padding)
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = np.empty((r_n, oh, ow, o_n), np.int32)
    if out.size:
        wt = np.ascontiguousarray(wi.transpose(1, 2, 3, 0))
        _check(load().esd_conv_current(_p(xu), r_n, c_n, h, w, _p(wt), o_n, k, stride, padding, oh, ow, _p(out)),
               "conv_current")
    return _plus_bias(out, c_n * k * k, bias)


class _StackPlan:
    """What ``esd_dense_stack`` needs of a stack of dense layers, built once per set of weights."""

    def __init__(self, layers):
        lib = load()
        w_ptrs, b_ptrs, params = [], [], []
        for w8, bias, neuron, const in layers:
            w, b = w8, bias
            w_ptrs.append(_p(w))
            b_ptrs.append(None if b is None else _p(b))
            params.append([w.shape[1], 0 if neuron.kind == "lif" else 1, int(bool(neuron.decay_input)),
                           int(neuron.v_reset is None), int(const["vth"]), int(const["vreset"]), int(const["decay"])])
        self.k0 = int(layers[0][0].shape[0])
        self.m_out = int(params[-1][0])
        self.w = (ctypes.c_void_p * len(layers))(*w_ptrs)
        self.b = (ctypes.c_void_p * len(layers))(*b_ptrs)
        self.params = np.ascontiguousarray(params, dtype=np.int64)
        self.args = (len(layers), self.w, self.b, _p(self.params), -arith.SG_RES_BITS, _SG_HALF)
        self.call = lib.esd_dense_stack


def stack_plan(layers) -> _StackPlan | None:
    """A plan for ``dense_stack`` of ``[(w8 [K, M], bias | None, neuron, neuron constants)]``, or
    None where the C bounds do not hold (the layer-by-layer path then runs): int8 weights, chained
    shapes, exact int32 currents (``dense_current``'s bound; the C code checks the biases on every
    call)."""
    k = None
    for w8, bias, _, _ in layers:
        # the caller's own arrays (the plan points into them, so in-place edits are seen)
        if (not isinstance(w8, np.ndarray) or w8.dtype != np.int8 or not w8.flags.c_contiguous
                or (bias is not None and (bias.dtype != np.int32 or not bias.flags.c_contiguous))):
            return None
        if w8.ndim != 2 or (k is not None and w8.shape[0] != k) or 0 in w8.shape:
            return None
        if w8.shape[0] * 255 * 128 >= (1 << 30) or (bias is not None and bias.shape != (w8.shape[1],)):
            return None
        k = w8.shape[1]
    return _StackPlan(layers) if layers else None


def dense_stack(plan: _StackPlan, x: np.ndarray) -> np.ndarray | None:
    """The output spikes ``[T, N, M_last]`` of the planned dense layers on ``x[T, N, K0]``, in one
    call: for each layer exactly ``prepare_inputs``, ``dense_current`` and ``neuron_run`` (want 0).
    None where ``x`` or a bias is outside the bounds (not uint8-representable, empty, |bias| >= 2**30)."""
    xu = as_u8(x)
    if xu is None or x.ndim != 3 or x.shape[2] != plan.k0 or x.size == 0:
        return None
    t_n, n_n, _ = x.shape
    out = np.empty((t_n, n_n, plan.m_out), np.uint8)
    n_l, w, b, params, sg_shift, half = plan.args
    rc = plan.call(xu.ctypes.data, t_n, n_n, plan.k0, n_l, w, b, params, sg_shift, half, out.ctypes.data)
    _check(min(rc, 0), "dense_stack")
    return out if rc == 0 else None


def neuron_run(neuron, const: dict, cur: np.ndarray, sg_exp: int | None = None):
    """``reference.neuron_run`` in C (int32 or int64 currents)."""
    if cur.dtype not in (np.int32, np.int64):
        cur = cur.astype(np.int64)
    cur = np.ascontiguousarray(cur)
    t_n, n_n, m_n = cur.shape
    spikes = np.empty(cur.shape, np.uint8)
    want = 2 if sg_exp is not None else 0
    sgi = np.empty(cur.shape if want == 2 else (1,), np.uint8)
    hs = np.empty(1, np.int64)
    sg_shift = (sg_exp if sg_exp is not None else 0) - arith.SG_RES_BITS
    if cur.size:
        _check(load().esd_neuron_run(_p(cur), int(cur.dtype == np.int32), t_n, n_n, m_n,
                                     0 if neuron.kind == "lif" else 1, int(bool(neuron.decay_input)),
                                     int(neuron.v_reset is None), int(const["vth"]), int(const["vreset"]),
                                     int(const["decay"]), want, int(sg_shift), _SG_HALF, _p(spikes), _p(hs),
                                     _p(sgi)), "neuron_run")
    return spikes, (sgi if want == 2 else None)


def dense_layer(inputs, w8: np.ndarray, bias: np.ndarray | None, neuron, const: dict, sg_exp: int | None = None,
                spikes: bool = True):
    """``neuron_run(dense_current(inputs, w8, bias))`` in one pass, sample by sample: the int32
    currents exist only per sample ([T, M] per thread), never as ``[T, N, M]``. Same
    ``(spikes, sg)``; None where the bounds of the int32 currents do not hold (then the caller
    runs the two entry points). ``spikes=False`` (with ``sg_exp``): ``(None, sg)``, the spikes
    being ``spikes_from_surrogate(sg)``."""
    if not isinstance(inputs, SpikeIndex) or not isinstance(w8, np.ndarray) or w8.dtype != np.int8 or w8.ndim != 2:
        return None
    t_n, n_n, k_n = inputs.shape
    if w8.shape[0] != k_n or k_n * 255 * 128 >= (1 << 30) or n_n == 0 or w8.shape[1] == 0:
        return None
    if bias is not None:
        if bias.shape != (w8.shape[1],) or int(np.abs(bias.astype(np.int64)).max(initial=0)) >= (1 << 30):
            return None
        bias = np.ascontiguousarray(bias, dtype=np.int32)
    w = np.ascontiguousarray(w8)
    m_n = w.shape[1]
    want = 0 if sg_exp is None else (2 if spikes else 3)
    out = np.empty((t_n, n_n, m_n) if want != 3 else (1,), np.uint8)
    sgi = np.empty((t_n, n_n, m_n) if want else (1,), np.uint8)
    sg_shift = (sg_exp if sg_exp is not None else 0) - arith.SG_RES_BITS
    _check(load().esd_dense_forward(_p(inputs._raw), inputs.mask, t_n, n_n, k_n, m_n, _p(w),
                                    None if bias is None else _p(bias),
                                    0 if neuron.kind == "lif" else 1, int(bool(neuron.decay_input)),
                                    int(neuron.v_reset is None), int(const["vth"]), int(const["vreset"]),
                                    int(const["decay"]), want, int(sg_shift), _SG_HALF, _p(out), _p(sgi)),
           "dense_forward")
    return (None if want == 3 else out), (sgi if want else None)


# ---------------------------------------------------------------------------------------------
# local errors and the fused update


def local_deltas(sg: np.ndarray, e: np.ndarray, b: np.ndarray | None, out: np.ndarray | None = None):
    """``reference.local_deltas`` in C (projection, LUT and the per-step int8 shift fused).
    ``out``: an int8 array of sg's shape for the deltas, which may be ``sg.view(np.int8)`` (the
    indices are then consumed: no second [T, N, M] array)."""
    project = b is not None
    e_max = int(np.abs(e).max()) if e.size else 0
    b_max = int(np.abs(b.astype(np.int64)).max()) if project and b.size else 1
    g_bound = e.shape[-1] * e_max * b_max if project else e_max
    if g_bound * int(_SG_LUT.max()) >= (1 << 62):
        return reference.local_deltas(sg, e, b, out)
    sg = np.ascontiguousarray(sg, dtype=np.uint8)
    t_n, n_n, m_n = sg.shape
    if e.ndim == 3 and e.shape[0] == t_n and e.shape[0] > 1 and e.strides[0] == 0:
        e = e[:1]  # the same error at every step (exact mode): do not materialise it
    small = g_bound < (1 << 31)  # the projection is exact in int32 (32x32->64 products with the LUT)
    dt = np.int32 if small else np.int64
    e = np.ascontiguousarray(e, dtype=dt)
    bb = np.ascontiguousarray(b, dtype=dt) if project else None
    if not project and e.shape[2] != m_n:
        raise ValueError(f"local_deltas: errors {e.shape} do not fit {sg.shape}")
    deltas = _out_int8(out, sg.shape)
    shifts = np.zeros(t_n, np.int64)
    if sg.size:
        _check(load().esd_local_deltas(_p(sg), 1, _p(e), int(small), e.shape[0], e.shape[2],
                                       _p(bb) if project else None, t_n, n_n, m_n, 0, 0, _p(_SG_LUT), _SG_HALF,
                                       _p(deltas), _p(shifts)), "local_deltas")
    return deltas, shifts


def _out_int8(out: np.ndarray | None, shape) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.int8)
    if out.dtype != np.int8 or out.shape != tuple(shape) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous int8 array of shape {tuple(shape)}")
    return out


def exact_deltas(sg: np.ndarray, e: np.ndarray, b: np.ndarray | None, carry: np.ndarray,
                 out: np.ndarray | None = None):
    """``reference.exact_deltas`` with the eligibility recurrence and the int8 shift in C (the
    once-per-batch projection ``e @ b`` is the reference's exact float64 BLAS)."""
    g = np.ascontiguousarray(e if b is None else reference.project(e, b), dtype=np.int64)
    if g.size and int(np.abs(g).max()) > arith.G_LIMIT:
        return reference.exact_deltas(sg, e, b, carry, out)  # raises: the rule is not defined there
    sg = np.ascontiguousarray(sg, dtype=np.uint8)
    t_n, n_n, m_n = sg.shape
    if g.shape != (n_n, m_n):
        raise ValueError(f"exact_deltas: errors {g.shape} do not fit {sg.shape}")
    carry = np.ascontiguousarray(carry, dtype=np.int64)
    deltas = _out_int8(out, sg.shape)
    shifts = np.zeros(t_n, np.int64)
    if sg.size:
        _check(load().esd_exact_deltas(_p(sg), _p(g), t_n, n_n, m_n, _p(_SG_LUT), _p(carry), _SG_HALF,
                                       _p(deltas), _p(shifts)), "exact_deltas")
    return deltas, shifts


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


def _update_fits(index: SpikeIndex, shifts: np.ndarray, m: int, k: int) -> bool:
    """The int64 gradient, its int32 per-step sums and ``grad * m + r`` cannot wrap (and the
    samples fit the uint16 index)."""
    n_n = index.shape[1]
    if n_n * 255 * 128 >= (1 << 31) or n_n > (1 << 16):
        return False
    grad_bound = n_n * index.vmax * 128 * sum(1 << int(s) for s in shifts)
    return grad_bound < (1 << 63) and arith.update_fits_int64(grad_bound, m, k)


def dense_update(inputs, deltas: np.ndarray, shifts: np.ndarray, master: np.ndarray, m: int, k: int, key: int,
                 out: tuple[np.ndarray, np.ndarray] | None = None):
    """``reference.dense_update`` fused in C; the reference runs outside the C bounds. ``out``:
    ``(master_out, w8_out)`` (int16 and int8, master's shape, C-contiguous) receive the result and
    are returned; ``master_out`` may be ``master`` itself (the update in place)."""
    shifts = np.ascontiguousarray(shifts, dtype=np.int64)
    di = as_i8(deltas)
    if (not isinstance(inputs, SpikeIndex) or di is None or deltas.ndim != 3 or master.dtype != np.int16
            or master.ndim != 2 or (shifts < 0).any() or (shifts > 62).any() or inputs.shape[1] > (1 << 16)
            or not 0 <= k <= 62 or not 0 <= m < (1 << 62) or not _update_fits(inputs, shifts, m, k)):
        return reference.dense_update(_array(inputs), deltas, shifts, master, m, k, key, out)
    k_n, m_n = master.shape
    t_n, n_n, _ = inputs.shape
    if inputs.shape[2] != k_n or di.shape[2] != m_n or inputs.shape[:2] != di.shape[:2]:
        raise ValueError(f"dense_update: shapes x{inputs.shape} d{deltas.shape} master{master.shape} do not align")
    if out is None:
        new_master, new_w8 = np.array(master, order="C"), np.empty((k_n, m_n), np.int8)
    else:
        new_master, new_w8 = out
        for a, dt in ((new_master, np.int16), (new_w8, np.int8)):
            if a.dtype != dt or a.shape != master.shape or not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError(f"dense_update: out arrays must be writeable C-contiguous {master.shape}")
        if new_master is not master:
            new_master[...] = master
    sat = np.zeros(2, np.int64)
    if master.size:
        bits, words, _, _ = inputs.bits()
        use32, s_min = _int32_plan(inputs, shifts)
        _check(load().esd_dense_update(_p(bits), words, _p(inputs._raw), int(inputs.binary), _p(di), t_n, n_n, k_n, m_n,
                                       _p(shifts), int(use32), s_min, _p(new_master), int(m), int(k),
                                       int(key) & ((1 << 64) - 1), UPDATE_TILE, _p(new_w8), _p(sat)),
               "dense_update")
    return new_master, new_w8, int(sat[0]), int(sat[1])


def int16_peak_ops_per_s(seconds: float = 0.3) -> float:
    """The machine's measured int16 SIMD peak (ops/s over all OpenMP threads): register-resident
    int16 multiply-adds, compiled for the CPU family like the kernels (for benchmarks)."""
    import time

    lib = load()
    out = np.zeros(192, np.int16)
    iters = 1 << 16
    while True:
        t0 = time.perf_counter()
        ops = lib.esd_int16_peak(iters, _p(out))
        dt = time.perf_counter() - t0
        if dt >= seconds or iters >= 1 << 34:
            return ops / dt
        iters *= 2
