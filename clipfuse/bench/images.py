"""Synthetic product photos of realistic size, as JPEG bytes (for ``clipfuse bench`` and tests).

A light background with a soft gradient, one product-like shape (ellipse or rounded box)
in a colour with stripes or a check pattern, a shadow, and sensor-like noise: JPEG files
of ~60-120 KB at 800x600, close to shop photos in size and decoding cost (smooth content
decodes faster than busy photos; the noise keeps the entropy-coded part realistic).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["REALISTIC_SIZES", "synthetic_jpeg", "synthetic_jpegs"]

#: sizes the benchmark cycles through: mostly 800x600 (landscape / portrait), some larger / smaller
REALISTIC_SIZES: tuple[tuple[int, int], ...] = ((800, 600), (600, 800), (800, 600), (1000, 1000), (640, 480))


def synthetic_jpeg(width: int, height: int, seed: int, *, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    background = np.float32(rng.uniform(215, 250)) - 25 * v[..., None] * rng.uniform(0.3, 1.0, 3).astype(np.float32)
    color = rng.uniform(20, 235, 3).astype(np.float32)
    cx, cy, rx, ry = (
        np.float32(x)
        for x in (rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.6), rng.uniform(0.18, 0.35), rng.uniform(0.2, 0.38))
    )
    if rng.random() < 0.5:
        shape = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0
    else:
        shape = (np.abs(u - cx) <= rx) & (np.abs(v - cy) <= ry)
    period = np.float32(rng.uniform(8, 40))
    if rng.random() < 0.5:
        pattern = (np.sin(xx * np.float32(np.pi / period) + np.float32(rng.uniform(0, 6))) > 0).astype(np.float32)
    else:
        pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    second = rng.uniform(20, 235, 3).astype(np.float32)
    product = color * (1 - pattern[..., None]) + second * pattern[..., None]
    shading = 0.75 + 0.25 * np.cos((u - cx) * 3)[..., None]
    shadow = np.exp(-(((u - cx - 0.03) / (rx * 1.2)) ** 2 + ((v - cy - 0.04) / (ry * 1.2)) ** 2))[..., None]
    image = background * (1 - 0.25 * shadow)
    image = np.where(shape[..., None], product * shading, image)
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * 4.0
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def synthetic_jpegs(
    n: int, *, seed: int = 0, sizes: tuple[tuple[int, int], ...] = REALISTIC_SIZES, quality: int = 90
) -> list[bytes]:
    """``n`` different photos cycling through ``sizes``; the same ``seed`` gives the same bytes."""
    return [synthetic_jpeg(*sizes[i % len(sizes)], seed * 1_000_003 + i, quality=quality) for i in range(n)]
