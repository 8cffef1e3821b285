"""Brush RLE codec speed: our vectorised numpy codec (backend.ls.rle) against label_studio_sdk's.

For each mask it checks that both encoders give the same ints and that both decoders give the
same alpha map, then prints one JSON line with median timings in ms:

    {"mask": "disc 1024x1024", "shape": [1024, 1024], "rle_ints": 4140, "ours_encode_ms": ...,
     "sdk_encode_ms": ..., "encode_speedup": ..., "ours_decode_ms": ..., "sdk_decode_ms": ...,
     "decode_speedup": ..., "identical": true, "repeats": 7, "sdk_repeats": 3}

Sizes are written W x H (4000x3000 is 3000 rows of 4000 pixels). The SDK encoder is timed as
``brush.mask2rle(mask_uint8)``, its decoder as ``brush.decode_rle(rle).reshape(H, W, 4)[:, :, 3]``.
Usage: python -m benchmarks.rle [--repeats 7] [--sdk-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from label_studio_sdk.converter import brush

from backend.ls.rle import decode_rle, encode_mask


def disc(width: int, height: int) -> np.ndarray:
    """``(height, width)`` bool disc centred in the image, radius 0.4 * min side."""
    yy, xx = np.ogrid[:height, :width]
    radius = 0.4 * min(width, height)
    return (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 <= radius**2


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    """``(height, width)`` bool mask, every pixel foreground with probability 0.5."""
    return np.random.default_rng(seed).random((height, width)) < 0.5


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(name: str, mask: np.ndarray, repeats: int, sdk_repeats: int) -> dict:
    """Check equality of the two codecs on ``mask`` ((H, W) bool) and time them."""
    h, w = mask.shape
    mask_u8 = mask.astype(np.uint8) * 255
    ours_rle = encode_mask(mask)
    sdk_rle = brush.mask2rle(mask_u8)
    ours_alpha = decode_rle(sdk_rle, h, w)
    sdk_alpha = brush.decode_rle(sdk_rle).reshape(h, w, 4)[:, :, 3]
    identical = ours_rle == sdk_rle and np.array_equal(ours_alpha, sdk_alpha) and np.array_equal(ours_alpha, mask_u8)

    ours_enc = median_ms(lambda: encode_mask(mask), repeats)
    sdk_enc = median_ms(lambda: brush.mask2rle(mask_u8), sdk_repeats)
    ours_dec = median_ms(lambda: decode_rle(sdk_rle, h, w), repeats)
    sdk_dec = median_ms(lambda: brush.decode_rle(sdk_rle).reshape(h, w, 4)[:, :, 3], sdk_repeats)
    return {
        "mask": name,
        "shape": [h, w],
        "rle_ints": len(sdk_rle),
        "ours_encode_ms": round(ours_enc, 3),
        "sdk_encode_ms": round(sdk_enc, 3),
        "encode_speedup": round(sdk_enc / ours_enc, 1),
        "ours_decode_ms": round(ours_dec, 3),
        "sdk_decode_ms": round(sdk_dec, 3),
        "decode_speedup": round(sdk_dec / ours_dec, 1),
        "identical": bool(identical),
        "repeats": repeats,
        "sdk_repeats": sdk_repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of our codec per case")
    parser.add_argument("--sdk-repeats", type=int, default=3, help="timed calls of the SDK codec per case")
    args = parser.parse_args()
    cases = [
        ("disc 512x512", disc(512, 512)),
        ("disc 1024x1024", disc(1024, 1024)),
        ("disc 4000x3000", disc(4000, 3000)),
        ("noise 256x256", noise(256, 256)),
    ]
    for name, mask in cases:
        print(json.dumps(bench(name, mask, args.repeats, args.sdk_repeats)), flush=True)


if __name__ == "__main__":
    main()
