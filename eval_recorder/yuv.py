"""Planar YUV 4:2:0 (yuv420p), what the H.264 encoder takes: conversion from RGB, and the
frame layout (even sides; the Y plane, then U, then V, each chroma plane half the rows and
columns). Frame sources that keep their frames in yuv420p (Flatland's renderer converts only
the cells that change) and the label overlay use it; the encoder process converts RGB frames
of other envs itself.
"""

from __future__ import annotations

import numpy as np

__all__ = ["even_size", "paste_rows_yuv420p", "planes", "rgb_to_yuv420p"]


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """RGB (h, w, 3) uint8 with even sides → yuv420p (h * 3 // 2, w): BT.601, limited range.

    Chroma is the BT.601 chroma of each 2x2 block's mean colour. Luma is then chosen per
    pixel to bring the decoded RGB (BT.601, chroma shared by the block) closest to the
    pixel's RGB, which wins back part of what 4:2:0 subsampling costs on flatland's small,
    colourful cells. Works in bands of rows, so a full frame needs little scratch. Block
    sums are taken with strided adds, and a pixel's mean and a block's chroma term are
    looked up (``_MEAN``, ``_CHROMA``: the float32 values the arithmetic gives), so the
    result is bit for bit that arithmetic's, faster than reducing 4-D views.
    """
    height, width = rgb.shape[:2]
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    y_plane, u_plane, v_plane = planes(out)
    for top in range(0, height, _BAND_ROWS):
        pixels = rgb[top : top + _BAND_ROWS].astype(np.int32)
        rows = pixels.shape[0]
        pairs = pixels[:, 0::2] + pixels[:, 1::2]
        blocks = pairs[0::2] + pairs[1::2]  # (rows / 2, width / 2, 3): sums of each 2x2 block
        r4, g4, b4 = blocks[..., 0], blocks[..., 1], blocks[..., 2]
        u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128
        v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
        u_plane[top // 2 : (top + rows) // 2] = u
        v_plane[top // 2 : (top + rows) // 2] = v
        # Decoded: R, G, B = 1.164383 (Y - 16) + chroma terms, whose sum is 1.625470 U' + 0.783059 V'.
        luma = _MEAN[pixels[..., 0] + pixels[..., 1] + pixels[..., 2]].reshape(rows // 2, 2, width // 2, 2)
        luma -= _CHROMA[u, v][:, None, :, None]
        luma /= _LUMA_SCALE
        luma += np.float32(16)
        np.rint(luma, out=luma)
        np.clip(luma, 0, 255, out=luma)
        y_plane[top : top + rows] = luma.reshape(rows, width)
    return out


_BAND_ROWS = 64  # even
_MEAN = np.arange(766, dtype=np.float32) / np.float32(3)  # a pixel's (R + G + B) / 3, in float32
_CHROMA = (  # [U, V]: the block's chroma term (1.625470 (U - 128) + 0.783059 (V - 128)) / 3, in float32
    (1.625470 / 3) * (np.arange(256)[:, None] - 128) + (0.783059 / 3) * (np.arange(256)[None, :] - 128)
).astype(np.float32)
_LUMA_SCALE = np.float32(1.164383)


def paste_rows_yuv420p(frame: np.ndarray, top: int, rgb_rows: np.ndarray) -> None:
    """Overwrite rows ``top ..`` of the yuv420p ``frame`` (h * 3 // 2, w) with ``rgb_rows`` (n, w, 3).

    ``top`` and ``n`` must be even (4:2:0 chroma covers 2x2 pixels). For a label strip
    burned into recorded frames: only the strip is converted, not the frame.
    """
    rows, width = rgb_rows.shape[:2]
    height = frame.shape[0] * 2 // 3
    if top % 2 or rows % 2 or top < 0 or top + rows > height or width != frame.shape[1]:
        raise ValueError(
            f"rows {top}..{top + rows} of width {width} do not fit a {frame.shape[1]}x{height} frame evenly"
        )
    y_plane, u_plane, v_plane = planes(frame)
    y, u, v = planes(rgb_to_yuv420p(rgb_rows))
    y_plane[top : top + rows] = y
    u_plane[top // 2 : (top + rows) // 2] = u
    v_plane[top // 2 : (top + rows) // 2] = v


def even_size(width: int, height: int) -> tuple[int, int]:
    """Largest even (width, height) not above the given one (yuv420p needs even sides)."""
    return width - width % 2, height - height % 2


def planes(yuv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a yuv420p array (h * 3 // 2, w): (h, w), then
    (h / 2, w / 2) twice."""
    height, width = yuv.shape[0] * 2 // 3, yuv.shape[1]
    flat = yuv.reshape(-1)
    size = width * height
    return (
        flat[:size].reshape(height, width),
        flat[size : size * 5 // 4].reshape(height // 2, width // 2),
        flat[size * 5 // 4 :].reshape(height // 2, width // 2),
    )
