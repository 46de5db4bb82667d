"""``--backend lava``: the int8 SDFA head as Lava process models (``fixed_pt``, Loihi2SimCfg).

``LavaBackend`` implements ``edge_sdfa.backend.Backend`` and is bit-exact with the numpy int8
backend (spikes, counts, masters, int8 weights, update statistics). ``LavaFloatHead`` runs the
float SDFA rule in the ``floating_pt`` models, for comparison with ``edge_sdfa.float_net``.

lava-nc 0.10.0 needs Python 3.10 and numpy < 2; anywhere else building a head raises a one-line
``MissingDependency``/``UserError`` that says so. Batches are streamed batch-parallel through a
graph built for ``capacity`` samples: forward passes of larger batches run in chunks (samples
are independent), an update larger than the capacity rebuilds the graph with the current weights.
"""
from __future__ import annotations

import sys
import weakref
from dataclasses import replace

import numpy as np

from edge_sdfa.errors import MissingDependency, UserError


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:2])) -> None:
    if tuple(version[:2]) != (3, 10):
        raise UserError(f"the lava backend needs Python 3.10 (lava-nc 0.10.0 supports only 3.10; "
                        f"this is Python {version[0]}.{version[1]})")


def require_lava():
    """Import lava or raise a one-line error naming the fix."""
    check_python(tuple(sys.version_info[:2]))
    if int(np.__version__.split(".")[0]) >= 2:
        raise UserError(f"the lava backend needs numpy < 2 (lava-nc 0.10.0), found numpy {np.__version__}")
    _lava_start_method()
    try:
        import lava.magma.core.run_configs  # noqa: F401
        import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
    except ImportError:
        raise MissingDependency("lava-nc", "the lava backend (lava-nc 0.10.0, Python 3.10, numpy<2)", extra="lava") from None


_LAVA_MP = "lava.magma.runtime.message_infrastructure.multiprocessing"


def _lava_start_method() -> None:
    """Lava calls ``multiprocessing.set_start_method('fork')`` (no force) when it is first imported,
    which fails once anything has fixed the start method (numba's parallel kernels do, by asking
    for it). Clear a 'fork' default so Lava can set it again; any other method is an error."""
    import multiprocessing as mp

    if _LAVA_MP in sys.modules:
        return
    current = mp.get_start_method(allow_none=True)
    if current is None:
        return
    if current != "fork":
        raise UserError(f"the lava backend needs the 'fork' multiprocessing start method; this process uses {current!r}")
    mp.set_start_method(None, force=True)


def _stop(net):
    if net is not None:
        net.stop()


class _HeadOwner:
    """Builds, rebuilds and stops the Lava graph; the runtime is stopped on close() or at exit."""

    def __init__(self, capacity: int):
        if int(capacity) < 1:
            raise UserError("the lava backend's capacity must be >= 1")
        self.capacity = int(capacity)
        self.net = None
        self._finalizer = None

    def _build(self, layer_params, capacity):
        from sim_backend.lava.head import HeadNetwork

        self.close()
        self.capacity = capacity
        self.net = HeadNetwork(self.spec, self.lay, layer_params, capacity, self.tag, self.mode)
        self._finalizer = weakref.finalize(self, _stop, self.net)

    def _forward_chunks(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0:
            return np.zeros((0, self.lay.classes), np.int64)
        return np.concatenate([self.net.forward(x[:, i:i + self.capacity])
                               for i in range(0, x.shape[1], self.capacity)])

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.net = None


class LavaBackend(_HeadOwner):
    """The int8 head in Lava ``fixed_pt`` process models (one Process per dense layer + error)."""

    name = "lava"
    tag = "fixed_pt"

    def __init__(self, capacity: int | str = 16):
        require_lava()
        super().__init__(int(capacity))
        self.spec = None

    def program(self, spec, layers, feedback_seed, config):
        from edge_sdfa.int8 import net as qn
        from sim_backend.lava.head import layout

        from edge_sdfa.spec import temporal_mode

        self.spec, self.config, self.mode = spec, config, temporal_mode(config.mode)
        self.layers = list(layers)
        self.lay = layout(spec, {i for i, q in enumerate(self.layers) if q.trainable})
        self.feedback = qn.feedback_int8(spec, feedback_seed)
        self._rebuild(self.capacity)

    def _rebuild(self, capacity):
        from sim_backend.lava.head import fixed_params

        params = fixed_params(self.spec, self.layers, self.feedback, self.lay, self.config.lr, self.config.seed,
                              self.mode)
        self._build(params, capacity)

    def forward(self, x):
        return self._forward_chunks(np.asarray(x))

    def update(self, x, y, update_index):
        from edge_sdfa.int8 import net as qn

        x = np.asarray(x)
        if x.shape[1] > self.capacity:
            self.layers = self.read_weights()
            self._rebuild(x.shape[1])
        out = self.net.train(x, np.asarray(y), int(update_index))
        stats = qn.UpdateStats(out["loss"], out["correct"], 0, 0, {})
        for i, vec in out["layers"].items():
            stats.saturated_master += int(vec[0])
            stats.saturated_w8 += int(vec[1])
            stats.shifts[i] = [int(s) for s in vec[2:]]
        return stats

    def read_weights(self):
        blocks = self.net.read()
        out = list(self.layers)
        for i, block in blocks.items():
            q = self.layers[i]
            n_in = block.shape[1] - 1
            master = None if q.master is None else np.rint(block[0, :n_in]).astype(np.int16)
            out[i] = replace(q, w8=np.rint(block[1, :n_in]).astype(np.int8), master=master)
        self.layers = out
        return list(out)

    def cost(self):
        return None


class LavaFloatHead(_HeadOwner):
    """The float SDFA rule in Lava ``floating_pt`` process models (SGD on float weights)."""

    tag = "floating_pt"

    def __init__(self, spec, params, feedback_seed: int, lr: float, mode: str | None = None,
                 trainable: set[int] | None = None, capacity: int = 16):
        require_lava()
        from edge_sdfa import float_net as fn
        from sim_backend.lava.head import float_params, layout

        from edge_sdfa.spec import temporal_mode

        super().__init__(capacity)
        mode = temporal_mode(mode)
        self.spec, self.mode = spec, mode
        self.lay = layout(spec, set(spec.synaptic_layers()) if trainable is None else set(trainable))
        feedback = fn.feedback_matrices(spec, feedback_seed)
        self._build(float_params(spec, params, feedback, self.lay, lr, mode), self.capacity)

    def forward(self, x) -> np.ndarray:
        """Output spike counts [N, classes]."""
        return self._forward_chunks(np.asarray(x))

    def update(self, x, y) -> float:
        """One SGD step of the float SDFA rule on the batch; returns the loss (final rates)."""
        if x.shape[1] > self.capacity:
            raise UserError(f"batch of {x.shape[1]} exceeds the capacity {self.capacity}")
        return self.net.train(np.asarray(x), np.asarray(y), 0)["loss"]

    def read_params(self) -> list[dict]:
        out = [{} for _ in self.spec.layers]
        for i, block in self.net.read().items():
            n_in = block.shape[1] - 1
            out[i] = {"weight": block[0, :n_in].T.copy()}
            if self.spec.layers[i].bias:
                out[i]["bias"] = block[0, n_in].copy()
        return out
