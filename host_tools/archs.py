"""Architecture strings for ``edge-sdfa pretrain --arch``: MLPs and the reference's ConvNet and VGG11.

::

    mlp:2312-1000-10                 Dense+neuron per size pair (the reference's MLP-A..D shapes)
    mlp:1000                         one hidden layer; input size and classes are taken from the data
    convnet                          the reference's ConvNet (c=128): 5 x [conv3x3 -> neuron -> pool2],
                                     Flatten, FC(c*H/32*W/32 -> 1024) -> neuron, FC(1024 -> classes)
    convnet:c=32,fc=256,blocks=3     smaller variants
    vgg11                            the reference's VGG11 (c=512, IF neurons): convs 64P,128P,256,256P,
                                     512,512P,512,512P, then FC 4096 -> 4096 -> classes
    vgg11:c=16,fc=128,in=2x64x64   (a small variant)

Options (after ``:``, comma separated ``key=value``; for ``mlp`` after the sizes, e.g.
``mlp:64-128-10,neuron=if``): ``neuron=lif|if``, ``tau=2``, ``vth=1``, ``reset=hard|subtract``,
``bias=0|1``, ``in=CxHxW`` (or ``in=N``), ``classes=K``, and for the ConvNets ``c=``, ``fc=``,
``blocks=`` (ConvNet), ``pool=max|avg``.

Where the reference differs: there is no BatchNorm (the reference's ConvNet has one per block;
the int8 device runtime has none, fold it into the conv before import), and no Vote layer (the
last FC outputs ``classes`` neurons instead of 10 per class). Input size and classes default to
the data set's, so the first FC size follows from the input (2048 for 2x128x128 in the ConvNet,
8192 for 2x128x128 in VGG11, 4480 and 17920 for 2x180x240, as the reference's configs).
"""
from __future__ import annotations

import math

from edge_sdfa.errors import UserError
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d

VGG11_CFG = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")
KINDS = ("mlp", "convnet", "vgg11")


def _parse_opts(items: list[str], text: str) -> dict[str, str]:
    opts = {}
    for item in items:
        if not item:
            continue
        if "=" not in item:
            raise UserError(f"arch {text!r}: option {item!r} is not key=value")
        k, v = item.split("=", 1)
        opts[k.strip()] = v.strip()
    return opts


def _shape(value: str, text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in value.lower().split("x"))
    except ValueError:
        raise UserError(f"arch {text!r}: in={value!r} is not a shape like 2x34x34 or 2312") from None
    if not shape or min(shape) < 1:
        raise UserError(f"arch {text!r}: in={value!r} is not a valid shape")
    return shape


def _neuron(opts: dict, default_kind: str, text: str) -> NeuronSpec:
    kind = opts.pop("neuron", default_kind)
    reset = opts.pop("reset", "hard")
    if reset not in ("hard", "subtract"):
        raise UserError(f"arch {text!r}: reset={reset!r} must be hard or subtract")
    try:
        return NeuronSpec(kind=kind, tau=float(opts.pop("tau", 2.0)), v_threshold=float(opts.pop("vth", 1.0)),
                          v_reset=0.0 if reset == "hard" else None)
    except ValueError as exc:
        raise UserError(f"arch {text!r}: {exc}") from None


def _int(opts: dict, key: str, default: int, text: str) -> int:
    try:
        value = int(opts.pop(key, default))
    except ValueError:
        raise UserError(f"arch {text!r}: {key} must be an integer") from None
    if value < 1:
        raise UserError(f"arch {text!r}: {key} must be >= 1")
    return value


def parse_arch(text: str, input_shape: tuple[int, ...] | None = None, classes: int | None = None,
               time_steps: int = 10, loss: str = "ce") -> NetworkSpec:
    """A NetworkSpec from an arch string; ``input_shape``/``classes`` (from the data) fill what the
    string leaves open and are checked against what it states."""
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UserError(f"unknown arch {text!r} (expected mlp:SIZES, convnet[:opts] or vgg11[:opts])")
    items = [p.strip() for p in rest.split(",")] if rest else []
    sizes: list[int] = []
    if kind == "mlp":
        if not items or "=" in items[0]:
            raise UserError(f"arch {text!r}: mlp needs sizes, e.g. mlp:2312-1000-10 or mlp:1000 (hidden only)")
        try:
            sizes = [int(s) for s in items[0].split("-")]
        except ValueError:
            raise UserError(f"arch {text!r}: sizes must be integers joined by '-'") from None
        items = items[1:]
    opts = _parse_opts(items, text)
    if "in" in opts:
        input_shape = _shape(opts.pop("in"), text)
    if "classes" in opts:
        classes = _int(opts, "classes", 10, text)
    bias = opts.pop("bias", "0") in ("1", "true", "yes")
    if kind == "mlp":
        neuron = _neuron(opts, "lif", text)
        _no_leftovers(opts, text)
        n_in = int(math.prod(input_shape)) if input_shape is not None else None
        if len(sizes) >= 2:
            full = sizes
        else:  # one hidden size: input and classes from the data
            if n_in is None or classes is None:
                raise UserError(f"arch {text!r}: give all sizes (in-hidden-out) when there is no data to infer them")
            full = [n_in, *sizes, classes]
        if min(full) < 1:
            raise UserError(f"arch {text!r}: sizes must be >= 1")
        if n_in is not None and full[0] != n_in:
            raise UserError(f"arch {text!r}: input size {full[0]} does not match the data's {n_in} "
                            f"(shape {tuple(input_shape)})")
        if classes is not None and full[-1] != classes:
            raise UserError(f"arch {text!r}: output size {full[-1]} does not match the data's {classes} classes")
        layers: list = []
        if input_shape is not None and len(input_shape) > 1:
            layers.append(Flatten())
        layers += [Dense(a, b, bias=bias, neuron=neuron) for a, b in zip(full[:-1], full[1:])]
        shape = tuple(input_shape) if input_shape is not None else (full[0],)
        return NetworkSpec(shape, tuple(layers), time_steps, loss)

    if input_shape is None or len(input_shape) != 3:
        raise UserError(f"arch {text!r}: convolutional nets need an image input CxHxW (got "
                        f"{None if input_shape is None else tuple(input_shape)}); pass in=2x128x128 "
                        "or a data set that is not flattened (e.g. flatten=0)")
    if classes is None:
        raise UserError(f"arch {text!r}: the number of classes is unknown; pass classes=K")
    pool_mode = opts.pop("pool", "max")
    if pool_mode not in ("max", "avg"):
        raise UserError(f"arch {text!r}: pool={pool_mode!r} must be max or avg")
    if kind == "convnet":
        neuron = _neuron(opts, "lif", text)
        c = _int(opts, "c", 128, text)
        fc = _int(opts, "fc", 1024, text)
        blocks = _int(opts, "blocks", 5, text)
        chans = [min(32 * 2 ** i, c) for i in range(blocks)]
        chans[-1] = c
        cfg: list = []
        for ch in chans:
            cfg += [ch, "P"]
        fcs = [fc]
    else:
        neuron = _neuron(opts, "if", text)
        c = _int(opts, "c", 512, text)
        fc = _int(opts, "fc", 4096, text)
        cfg = [x if x == "P" else max(1, x * c // 512) for x in VGG11_CFG]
        fcs = [fc, fc]
    _no_leftovers(opts, text)
    layers = []
    ch_in = input_shape[0]
    shape = tuple(input_shape)
    for item in cfg:
        if item == "P":
            layer = Pool2d(2, pool_mode)
        else:
            layer = Conv2d(ch_in, item, 3, 1, 1, bias=bias, neuron=neuron)
            ch_in = item
        try:
            shape = layer.output_shape(shape)
        except UserError as exc:
            raise UserError(f"arch {text!r}: input {tuple(input_shape)} is too small for this net ({exc})") from None
        layers.append(layer)
    layers.append(Flatten())
    n = int(math.prod(shape))
    for width in fcs:
        layers.append(Dense(n, width, bias=bias, neuron=neuron))
        n = width
    layers.append(Dense(n, classes, bias=bias, neuron=neuron))
    return NetworkSpec(tuple(input_shape), tuple(layers), time_steps, loss)


def _no_leftovers(opts: dict, text: str) -> None:
    if opts:
        raise UserError(f"arch {text!r}: unknown option(s) {', '.join(sorted(opts))}")
