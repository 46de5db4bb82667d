"""Mapping of synaptic layers onto crossbars, with cycle counts.

A weight matrix of ``rows x cols`` (inputs x outputs) is tiled onto ``R x C`` arrays. A signed int8
weight is a differential pair (G+ on one array, G- on its twin) of ``slices`` cells each, so a
tile costs ``2 * slices`` physical arrays; the pair is subtracted in the analog domain, so one
conversion per logical column and slice.

Convolutions (stride 1) are mapped three ways and the one with the fewest computing cycles is
kept, as in VW-SDK (Rhe et al., DATE 2022, ``function.py``): im2col, SDK (square parallel windows,
all input channels in one window), and VW-SDK (rectangular windows with input-channel tiling).
Cycle counts (``cc``) follow VW-SDK: the cycles one array would need for the whole layer per
input frame. Tiles of one layer run in parallel, so the latency per frame is ``positions`` cycles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edge_sdfa.spec import Conv2d, Dense


@dataclass(frozen=True)
class ConvMapping:
    method: str                 # "im2col", "sdk" or "vw-sdk"
    window_h: int               # parallel window (PW) height / width in input pixels
    window_w: int
    outputs_h: int              # output pixels per window (i, j in VW-SDK)
    outputs_w: int
    in_channels_per_tile: int
    out_channels_per_tile: int
    row_tiles: int
    col_tiles: int
    positions: int              # window positions per frame = cycles per frame with tiles in parallel
    rows_used: int              # array rows one tile uses
    cols_used: int              # array columns one tile uses

    @property
    def tiles(self) -> int:
        return self.row_tiles * self.col_tiles

    @property
    def cc(self) -> int:
        """Computing cycles on one array (VW-SDK's figure of merit)."""
        return self.positions * self.tiles

    @property
    def duplication(self) -> int:
        """How many copies of each weight the mapping stores (SDK/VW-SDK shift-and-duplicate)."""
        return self.outputs_h * self.outputs_w


@dataclass(frozen=True)
class LayerMapping:
    """One synaptic layer on crossbars."""

    kind: str                   # "dense" or "conv2d"
    method: str
    in_features: int            # weight-matrix rows (K*K*IC for convolutions)
    out_features: int           # weight-matrix columns (OC)
    weights: int                # distinct weights
    stored_weights: int         # weights including duplicates
    row_tiles: int
    col_tiles: int
    rows_used: int              # per tile (mean over tiles)
    cols_used: int              # per tile (mean over tiles)
    cycles_per_step: int        # array cycles per time step, tiles in parallel
    cc: int                     # VW-SDK computing cycles (one array)
    outputs_per_step: int       # output neurons (pre-pooling) per time step
    inputs_per_step: int        # input features per time step
    slices: int
    conv: ConvMapping | None = None

    @property
    def tiles(self) -> int:
        return self.row_tiles * self.col_tiles

    @property
    def arrays(self) -> int:
        """Physical arrays: tiles x slices x 2 (differential pair)."""
        return self.tiles * self.slices * 2

    @property
    def cells(self) -> int:
        return self.stored_weights * self.slices * 2


def map_dense(layer: Dense, rows: int, cols: int, slices: int) -> LayerMapping:
    rt, ct = math.ceil(layer.in_features / rows), math.ceil(layer.out_features / cols)
    return LayerMapping("dense", "tiled", layer.in_features, layer.out_features,
                        layer.in_features * layer.out_features, layer.in_features * layer.out_features,
                        rt, ct, math.ceil(layer.in_features / rt), math.ceil(layer.out_features / ct),
                        1, rt * ct, layer.out_features, layer.in_features, slices)


def im2col(h: int, w: int, k: int, ic: int, oc: int, rows: int, cols: int, oh: int, ow: int) -> ConvMapping:
    rt, ct = math.ceil(k * k * ic / rows), math.ceil(oc / cols)
    return ConvMapping("im2col", k, k, 1, 1, ic, oc, rt, ct, oh * ow,
                       math.ceil(k * k * ic / rt), math.ceil(oc / ct))


def _windows(size: int, k: int, step: int) -> int:
    """Window positions along one dimension for a parallel window of ``k + step - 1`` pixels."""
    pw = k + step - 1
    if pw > size:
        return 0
    return math.ceil((size - pw) / step) + 1


def sdk(h: int, w: int, k: int, ic: int, oc: int, rows: int, cols: int) -> ConvMapping | None:
    """Best square shift-and-duplicate window whose duplicated kernels fit the array's columns."""
    best = None
    for i in range(2, min(h, w) - k + 2):
        if oc * i * i > cols:
            break
        pw = k + i - 1
        nh, nw = _windows(h, k, i), _windows(w, k, i)
        if not nh or not nw:
            break
        rt = math.ceil(pw * pw * ic / rows)
        m = ConvMapping("sdk", pw, pw, i, i, ic, oc, rt, 1, nh * nw,
                        math.ceil(pw * pw * ic / rt), oc * i * i)
        if best is None or m.cc < best.cc:
            best = m
    return best


def vw_sdk(h: int, w: int, k: int, ic: int, oc: int, rows: int, cols: int) -> ConvMapping | None:
    """Best rectangular parallel window with input-channel tiling (VW-SDK)."""
    best = None
    max_extra = max(1, rows // k - k + 1)    # a window taller than rows // k cannot fit one channel
    for i in range(1, min(h - k + 1, max_extra) + 1):
        for j in range(1, min(w - k + 1, max_extra) + 1):
            if i == 1 and j == 1:
                continue
            pw_h, pw_w = k + i - 1, k + j - 1
            ict = min(rows // (pw_h * pw_w), ic)
            oct_ = min(cols // (i * j), oc)
            if ict < 1 or oct_ < 1:
                continue
            nh, nw = _windows(h, k, i), _windows(w, k, j)
            if not nh or not nw:
                continue
            m = ConvMapping("vw-sdk", pw_h, pw_w, i, j, ict, oct_, math.ceil(ic / ict),
                            math.ceil(oc / oct_), nh * nw, pw_h * pw_w * ict, oct_ * i * j)
            if best is None or m.cc < best.cc:
                best = m
    return best


def conv_mappings(h: int, w: int, k: int, ic: int, oc: int, rows: int, cols: int,
                  stride: int = 1) -> dict[str, ConvMapping]:
    """All applicable mappings of a convolution on a (padded) ``h x w x ic`` input."""
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    found = {"im2col": im2col(h, w, k, ic, oc, rows, cols, oh, ow)}
    if stride == 1:
        for name, fn in (("sdk", sdk), ("vw-sdk", vw_sdk)):
            m = fn(h, w, k, ic, oc, rows, cols)
            if m is not None:
                found[name] = m
    return found


def best_conv_mapping(h: int, w: int, k: int, ic: int, oc: int, rows: int, cols: int,
                      stride: int = 1) -> ConvMapping:
    found = conv_mappings(h, w, k, ic, oc, rows, cols, stride)
    order = {"im2col": 0, "sdk": 1, "vw-sdk": 2}
    return min(found.values(), key=lambda m: (m.cc, order[m.method]))


def map_conv(layer: Conv2d, input_shape: tuple[int, ...], rows: int, cols: int, slices: int,
             method: str = "best") -> LayerMapping:
    c, h, w = input_shape
    p, k = layer.padding, layer.kernel_size
    hp, wp = h + 2 * p, w + 2 * p
    if method == "best":
        m = best_conv_mapping(hp, wp, k, c, layer.out_channels, rows, cols, layer.stride)
    else:
        m = conv_mappings(hp, wp, k, c, layer.out_channels, rows, cols, layer.stride)[method]
    _, oh, ow = layer.output_shape(input_shape)
    weights = k * k * c * layer.out_channels
    return LayerMapping("conv2d", m.method, k * k * c, layer.out_channels, weights, weights * m.duplication,
                        m.row_tiles, m.col_tiles, m.rows_used, m.cols_used, m.positions, m.cc,
                        layer.out_channels * oh * ow, c * h * w, slices, conv=m)
