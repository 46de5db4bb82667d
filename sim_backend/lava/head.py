"""Host side of the Lava SDFA head: build the Process graph, drive operations, read results.

``HeadNetwork`` owns one Lava runtime: ``SDFALayer`` per dense layer of the head (chained
port to port), one ``OutputError`` whose ``e_out`` fans out to every trainable layer, and the
external pipes through which the host sends commands and input frames and receives counts,
update statistics and weights (a whole array per message: ~1 ms for 784x256, instead of
~11 s through element-wise ``Var.get()``).

Only this package imports lava, and this module only once a head is built.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.spec import Dense, Flatten, NetworkSpec


@dataclass(frozen=True)
class HeadLayout:
    """Which layers of a head spec become Processes: the dense layers, in order (Flatten is a no-op
    on the flattened frames the host streams)."""

    dense: tuple[int, ...]          # layer indices of the dense layers
    trainable: tuple[int, ...]      # the subset that learns
    n_in: int
    classes: int


def layout(spec: NetworkSpec, trainable: set[int]) -> HeadLayout:
    dense = []
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Dense):
            dense.append(i)
        elif isinstance(layer, Flatten):
            if dense:
                continue
        else:
            raise UserError(f"the lava backend runs dense heads only; layer {i} is {layer.type} "
                            f"(partition the network after its last conv/pool layer)")
    if not dense:
        raise UserError("the head has no dense layer")
    n_in = int(np.prod(spec.shapes()[dense[0]]))
    return HeadLayout(tuple(dense), tuple(i for i in dense if i in trainable), n_in, spec.num_classes)


def _neuron_dict(layer: Dense) -> dict:
    n = layer.neuron
    return {"kind": n.kind, "tau": n.tau, "v_threshold": n.v_threshold, "v_reset": n.v_reset,
            "decay_input": n.decay_input}


def fixed_params(spec: NetworkSpec, qnet, feedback: dict, lay: HeadLayout, lr: float, seed: int,
                 mode: str) -> list[dict]:
    from edge_sdfa import float_net as fn

    norm = fn.feedback_norm(spec)
    out = []
    for i in lay.dense:
        q = qnet[i]
        out.append({"neuron": _neuron_dict(spec.layers[i]), "exp": int(q.exp), "w8": np.asarray(q.w8),
                    "master": None if q.master is None else np.asarray(q.master),
                    "bias": None if q.bias is None else np.asarray(q.bias),
                    "feedback": None if i == lay.dense[-1] or i not in feedback else np.asarray(feedback[i]),
                    "is_last": i == lay.dense[-1], "norm": norm, "lr": lr, "seed": seed, "layer_index": i,
                    "mode": mode})
    return out


def float_params(spec: NetworkSpec, params, feedback: dict, lay: HeadLayout, lr: float, mode: str) -> list[dict]:
    from edge_sdfa import float_net as fn

    norm = fn.feedback_norm(spec)
    out = []
    for i in lay.dense:
        p = params[i]
        out.append({"neuron": _neuron_dict(spec.layers[i]), "weight": np.asarray(p["weight"]),
                    "bias": None if "bias" not in p else np.asarray(p["bias"]),
                    "feedback": None if i == lay.dense[-1] or i not in feedback else np.asarray(feedback[i]),
                    "is_last": i == lay.dense[-1], "norm": norm, "lr": lr, "mode": mode})
    return out


class HeadNetwork:
    """A running Lava graph of the head for batches of up to ``capacity`` samples."""

    def __init__(self, spec: NetworkSpec, lay: HeadLayout, layer_params: list[dict], capacity: int,
                 tag: str, mode: str):
        from lava.magma.core.run_configs import Loihi2SimCfg

        from sim_backend.lava.procs.error import OutputError
        from sim_backend.lava.procs.layer import SDFALayer

        self.spec, self.lay, self.capacity, self.tag, self.mode = spec, lay, capacity, tag, mode
        self.T = spec.time_steps
        shapes = spec.shapes()
        self.layers = []
        for j, (i, p) in enumerate(zip(lay.dense, layer_params)):
            layer = spec.layers[i]
            self.layers.append(SDFALayer(n_in=int(np.prod(shapes[i])), n_out=layer.out_features,
                                         capacity=capacity, classes=lay.classes, time_steps=self.T,
                                         first=j == 0, trainable=i in lay.trainable, params=p,
                                         name=f"layer{i}"))
        self.error = OutputError(capacity=capacity, classes=lay.classes, time_steps=self.T, loss=spec.loss,
                                 mode=mode, learners=len(lay.trainable), name="error")
        for a, b in zip(self.layers[:-1], self.layers[1:]):
            a.s_out.connect(b.s_in)
        self.layers[-1].s_out.connect(self.error.s_in)
        learners = [proc for i, proc in zip(lay.dense, self.layers) if i in lay.trainable]
        if learners:
            self.error.e_out.connect([proc.err_in for proc in learners])
        self.cfg = Loihi2SimCfg(select_tag=tag)
        self.procs = [*self.layers, self.error]
        self.layers[0].create_runtime(run_cfg=self.cfg)
        self.running = True
        self.read()  # start the runtime now (a runtime never run is not released by stop())

    # -- operations -------------------------------------------------------------------------------
    def _run(self, op: int, n_real: int, update_index: int = 0, labels=None, frames=None) -> None:
        from lava.magma.core.run_conditions import RunSteps

        from sim_backend.lava.procs import protocol as P

        cmd = P.command(op, n_real, update_index, self.capacity, labels)
        for proc in self.procs:
            proc.ctl_in.external_pipe_csp_send_port.send(cmd)
        if frames is not None:
            pipe = self.layers[0].s_in.external_pipe_csp_send_port
            for frame in frames:
                pipe.send(frame)
        self.layers[0].run(condition=RunSteps(num_steps=P.op_steps(op, self.T)), run_cfg=self.cfg)

    def _frames(self, x: np.ndarray) -> np.ndarray:
        # Everything a model could choke on is checked here: an exception inside a Lava process
        # model leaves the runtime waiting forever instead of raising in the host.
        if x.ndim < 3:
            raise UserError(f"expected a batch x[T, N, ...], got shape {x.shape}")
        t_steps, n = x.shape[:2]
        if t_steps != self.T:
            raise UserError(f"the head runs {self.T} time steps, got a batch of {t_steps}")
        if n > self.capacity:
            raise UserError(f"batch of {n} exceeds the Lava head's capacity {self.capacity}")
        if int(np.prod(x.shape[2:])) != self.lay.n_in:
            raise UserError(f"the head takes {self.lay.n_in} inputs per step, got shape {x.shape[2:]}")
        if self.tag == "fixed_pt":
            if not (x.dtype == bool or np.issubdtype(x.dtype, np.integer)):
                raise UserError(f"int8 runtime needs integer spikes or counts, got {x.dtype}")
            if x.size and (x.min() < 0 or x.max() > 255):
                raise UserError("int8 runtime needs spikes or counts in 0..255")
        elif x.size and not np.all(np.isfinite(x)):
            raise UserError("inputs must be finite")
        frames = np.zeros((self.T, self.capacity, self.lay.n_in))
        frames[:, :n] = x.reshape(t_steps, n, -1)
        return frames

    def _result(self, n: int) -> tuple[np.ndarray, float, int]:
        res = self.error.res_out.external_pipe_csp_recv_port.recv()
        counts = np.rint(res[:-2]).reshape(self.capacity, self.lay.classes).astype(np.int64)[:n]
        return counts, float(res[-2]), int(res[-1])

    def forward(self, x: np.ndarray) -> np.ndarray:
        from sim_backend.lava.procs import protocol as P

        self._run(P.FORWARD, x.shape[1], frames=self._frames(x))
        return self._result(x.shape[1])[0]

    def train(self, x: np.ndarray, y: np.ndarray, update_index: int) -> dict:
        from sim_backend.lava.procs import protocol as P

        n = x.shape[1]
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and (y.min() < 0 or y.max() >= self.lay.classes)):
            raise UserError(f"labels must be {n} integers in 0..{self.lay.classes - 1}")
        if n == 0:
            raise UserError("an update needs at least one sample")
        frames = self._frames(x)  # validated before anything is sent
        self._run(P.TRAIN, n, update_index, labels=y, frames=frames)
        counts, loss, correct = self._result(n)
        stats = {}
        for i, proc in zip(self.lay.dense, self.layers):
            if i in self.lay.trainable:
                stats[i] = proc.stats_out.external_pipe_csp_recv_port.recv()
        return {"counts": counts, "loss": loss, "correct": correct, "layers": stats}

    def read(self) -> dict[int, np.ndarray]:
        """Per dense layer index, the block ``[2, in + 1, out]`` its model sends (see the models)."""
        from sim_backend.lava.procs import protocol as P

        self._run(P.READ, 0)
        return {i: proc.w_out.external_pipe_csp_recv_port.recv() for i, proc in zip(self.lay.dense, self.layers)}

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self.layers[0].stop()
            except Exception:  # a runtime that failed half-way: nothing more to release here
                pass
