"""Crossbar mapping: tiling, im2col / SDK / VW-SDK cycle counts."""
from __future__ import annotations

import pytest

from edge_sdfa.spec import Conv2d, Dense
from sim_backend.pipesdfa.mapping import best_conv_mapping, conv_mappings, map_conv, map_dense

pytestmark = pytest.mark.unit


def test_vw_sdk_reference_numbers():
    """VGG13 layer 1 on a 512x512 array, as the VW-SDK code gives (research notes, section 4)."""
    found = conv_mappings(224, 224, 3, 3, 64, 512, 512)
    assert found["im2col"].cc == 49284
    assert found["sdk"].cc == 12321
    assert found["vw-sdk"].cc == 6216
    vw = found["vw-sdk"]
    assert sorted([vw.window_h, vw.window_w]) == [3, 10] and vw.in_channels_per_tile == 3
    assert best_conv_mapping(224, 224, 3, 3, 64, 512, 512).method == "vw-sdk"


def test_im2col_by_hand():
    # 6x6x2 input, 3x3 kernel, 4 output channels, 8x8 array: 18 rows -> 3 row tiles, 16 positions
    m = conv_mappings(6, 6, 3, 2, 4, 8, 8)["im2col"]
    assert (m.row_tiles, m.col_tiles, m.positions, m.cc) == (3, 1, 16, 48)


def test_best_never_worse_than_im2col():
    for h, ic, oc in [(34, 2, 32), (18, 64, 128), (10, 256, 256), (6, 512, 512)]:
        found = conv_mappings(h, h, 3, ic, oc, 128, 128)
        best = best_conv_mapping(h, h, 3, ic, oc, 128, 128)
        assert best.cc <= found["im2col"].cc
        assert best.cc == min(m.cc for m in found.values())


def test_dense_tiling():
    m = map_dense(Dense(2312, 1000), 128, 128, slices=2)
    assert (m.row_tiles, m.col_tiles) == (19, 8)
    assert m.arrays == 19 * 8 * 2 * 2
    assert m.cycles_per_step == 1 and m.cc == 19 * 8
    assert m.cells == 2312 * 1000 * 2 * 2


def test_conv_layer_mapping_counts_duplicates():
    layer = Conv2d(2, 32, 3, 1, 1)
    m = map_conv(layer, (2, 16, 16), 128, 128, slices=2)
    assert m.outputs_per_step == 32 * 16 * 16
    assert m.stored_weights == m.weights * m.conv.duplication
    assert m.cycles_per_step == m.conv.positions
    assert m.cc <= 16 * 16  # im2col would need one cycle per output pixel
    # strided convolutions fall back to im2col
    s = map_conv(Conv2d(2, 8, 3, 2, 1), (2, 16, 16), 128, 128, slices=2)
    assert s.method == "im2col" and s.cycles_per_step == 8 * 8
