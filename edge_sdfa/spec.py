"""Network specs: small typed dataclasses, kept apart from the kernels that run them.

A network is a tuple of layers applied in order to a ``[T, N, *input_shape]`` input. Layers with
synapses (Dense, Conv2d) carry their neuron; pooling and flatten layers act on spikes. Weight
layouts follow the usual conventions: Dense ``weight`` is ``[out, in]``, Conv2d ``weight`` is
``[out_channels, in_channels, kh, kw]``. The specs hold no arrays: parameters are a separate
``list[dict[str, np.ndarray]]`` so that one spec runs float or int8.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Union

from edge_sdfa.errors import UserError

NeuronKind = Literal["lif", "if"]

# How the SDFA rule uses time (the one definition; every caller validates with temporal_mode()):
# online = a per-step local term on the running output rate, no T-long history;
# exact = the final rate's error applied at every step.
TemporalMode = Literal["online", "exact"]
TEMPORAL_MODES: tuple[str, ...] = ("online", "exact")
DEFAULT_TEMPORAL_MODE: TemporalMode = "online"


def temporal_mode(mode: str | None) -> TemporalMode:
    """``mode`` checked (None: the default); a one-line UserError names the known modes."""
    if mode is None:
        return DEFAULT_TEMPORAL_MODE
    if mode not in TEMPORAL_MODES:
        raise UserError(f"unknown temporal mode {mode!r} (expected {' or '.join(TEMPORAL_MODES)})")
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class NeuronSpec:
    """Leaky (LIF) or non-leaky (IF) integrate-and-fire neuron, SpikingJelly semantics.

    LIF with ``decay_input``: ``h = v + (x - (v - v_reset)) / tau``; without it
    ``h = v - (v - v_reset) / tau + x``. IF: ``h = v + x``. Spike ``s = h >= v_threshold``
    (``spike_if=">"``: ``h > v_threshold``, snnTorch's and Norse's condition; int8 runs it as
    ``h >= vth + 1`` with a hard reset, see ``int8.arith.neuron_constants``).
    Hard reset (``v_reset`` a number): ``v = v_reset`` where it spiked; soft reset
    (``v_reset=None``): ``v = h - v_threshold`` where it spiked.
    """

    kind: NeuronKind = "lif"
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    spike_if: str = ">="

    def __post_init__(self):
        if self.spike_if not in (">=", ">"):
            raise UserError(f"spike condition {self.spike_if!r} must be '>=' or '>'")
        if self.kind not in ("lif", "if"):
            raise UserError(f"unknown neuron kind {self.kind!r} (expected 'lif' or 'if')")
        if self.kind == "lif" and not self.tau > 1.0:
            raise UserError(f"LIF tau must be > 1, got {self.tau}")
        if not self.v_threshold > 0:
            raise UserError(f"v_threshold must be > 0, got {self.v_threshold}")

    @property
    def input_gain(self) -> float:
        """d h / d x: how much of the input current reaches the membrane in one step."""
        return 1.0 / self.tau if (self.kind == "lif" and self.decay_input) else 1.0

    @property
    def leak(self) -> float:
        """d h_t / d v_{t-1}."""
        return 1.0 - 1.0 / self.tau if self.kind == "lif" else 1.0


@dataclass(frozen=True)
class Dense:
    in_features: int
    out_features: int
    bias: bool = False
    neuron: NeuronSpec = field(default_factory=NeuronSpec)
    type: str = "dense"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != (self.in_features,):
            raise UserError(f"Dense expects input shape ({self.in_features},), got {tuple(input_shape)}")
        return (self.out_features,)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes


@dataclass(frozen=True)
class Conv2d:
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    bias: bool = False
    neuron: NeuronSpec = field(default_factory=NeuronSpec)
    type: str = "conv2d"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise UserError(f"Conv2d expects input ({self.in_channels}, H, W), got {tuple(input_shape)}")
        _, h, w = input_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if oh <= 0 or ow <= 0:
            raise UserError(f"Conv2d kernel {k} does not fit input {h}x{w}")
        return (self.out_channels, oh, ow)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel_size
        shapes = {"weight": (self.out_channels, self.in_channels, k, k)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes


@dataclass(frozen=True)
class Pool2d:
    """Max or average pooling over non-overlapping ``kernel_size`` windows (stride = kernel)."""

    kernel_size: int = 2
    mode: Literal["max", "avg"] = "max"
    type: str = "pool2d"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise UserError(f"Pool2d expects (C, H, W), got {tuple(input_shape)}")
        c, h, w = input_shape
        k = self.kernel_size
        if h < k or w < k:
            raise UserError(f"Pool2d kernel {k} larger than input {h}x{w}")
        return (c, h // k, w // k)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}


@dataclass(frozen=True)
class Flatten:
    type: str = "flatten"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(math.prod(input_shape)),)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}


Layer = Union[Dense, Conv2d, Pool2d, Flatten]
LAYER_TYPES: dict[str, type] = {"dense": Dense, "conv2d": Conv2d, "pool2d": Pool2d, "flatten": Flatten}


def has_synapses(layer: Layer) -> bool:
    return isinstance(layer, (Dense, Conv2d))


@dataclass(frozen=True)
class NetworkSpec:
    """A feed-forward SNN: input shape per time step, layers, time steps, and the readout."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    time_steps: int = 10
    loss: Literal["ce", "mse"] = "ce"

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.time_steps < 1:
            raise UserError(f"time_steps must be >= 1, got {self.time_steps}")
        if self.loss not in ("ce", "mse"):
            raise UserError(f"unknown loss {self.loss!r} (expected 'ce' or 'mse')")
        if not self.layers or not has_synapses(self.layers[-1]):
            raise UserError("the last layer of a network must be Dense or Conv2d (it produces the output spikes)")
        self.shapes()  # validates the chain

    def shapes(self) -> list[tuple[int, ...]]:
        """Input shape of every layer, then the output shape: ``len(layers) + 1`` entries."""
        shapes = [self.input_shape]
        for layer in self.layers:
            shapes.append(layer.output_shape(shapes[-1]))
        return shapes

    @property
    def num_classes(self) -> int:
        return int(math.prod(self.shapes()[-1]))

    def synaptic_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if has_synapses(layer)]

    def split(self, cut: int) -> tuple["NetworkSpec | None", "NetworkSpec"]:
        """Split at layer index ``cut``: layers[:cut] are frozen, layers[cut:] the trainable head."""
        if not 0 <= cut < len(self.layers):
            raise UserError(f"partition point {cut} outside 0..{len(self.layers) - 1}")
        shapes = self.shapes()
        head = NetworkSpec(shapes[cut], self.layers[cut:], self.time_steps, self.loss)
        if cut == 0:
            return None, head
        frozen = _FrozenSpec(self.input_shape, self.layers[:cut], self.time_steps)
        return frozen, head

    # -- serialisation (manifest.json) --------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "time_steps": self.time_steps,
            "loss": self.loss,
            "layers": [layer_to_dict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSpec":
        try:
            layers = tuple(layer_from_dict(x) for x in d["layers"])
            return cls(tuple(d["input_shape"]), layers, int(d.get("time_steps", 10)), d.get("loss", "ce"))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"invalid network spec: {exc}") from None


@dataclass(frozen=True)
class _FrozenSpec:
    """The frozen front of a partitioned network: layers without a readout requirement."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    time_steps: int

    def shapes(self) -> list[tuple[int, ...]]:
        shapes = [tuple(self.input_shape)]
        for layer in self.layers:
            shapes.append(layer.output_shape(shapes[-1]))
        return shapes

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "time_steps": self.time_steps,
                "layers": [layer_to_dict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "FrozenSpec":
        try:
            return cls(tuple(d["input_shape"]), tuple(layer_from_dict(x) for x in d["layers"]),
                       int(d["time_steps"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"invalid frozen spec: {exc}") from None


FrozenSpec = _FrozenSpec


def layer_to_dict(layer: Layer) -> dict:
    d = dataclasses.asdict(layer)
    if "neuron" in d:
        d["neuron"] = dict(d["neuron"])
        if d["neuron"].get("spike_if") == ">=":  # the default: specs written before the field read the same
            del d["neuron"]["spike_if"]
    return d


def layer_from_dict(d: dict) -> Layer:
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in LAYER_TYPES:
        raise UserError(f"unknown layer type {kind!r} (known: {', '.join(LAYER_TYPES)})")
    if "neuron" in d:
        d["neuron"] = NeuronSpec(**d["neuron"])
    return LAYER_TYPES[kind](**d)


def mlp(sizes: list[int] | tuple[int, ...], neuron: NeuronSpec | None = None, time_steps: int = 10,
        loss: str = "ce", bias: bool = False) -> NetworkSpec:
    """``mlp([2312, 1000, 10])``: Dense+neuron layers, as the reference's MLPs."""
    if len(sizes) < 2:
        raise UserError("an MLP needs at least an input and an output size")
    neuron = neuron or NeuronSpec()
    layers = tuple(Dense(a, b, bias=bias, neuron=neuron) for a, b in zip(sizes[:-1], sizes[1:]))
    return NetworkSpec((sizes[0],), layers, time_steps, loss)
