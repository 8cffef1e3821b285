"""Tests for backend.ls.rle: byte equality with label_studio_sdk's brush codec, round trips, errors.

The SDK comparisons are skipped when label_studio_sdk is not installed. Its decoder is a per-bit
Python loop, so the noisy masks compared against it stay small (64x64).
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.ls.rle import RLEError, decode_rle, decode_values, encode_alpha, encode_mask, encode_values


def _brush():
    return pytest.importorskip("label_studio_sdk.converter.brush")


def _disc(height: int, width: int, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:height, :width]
    return (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= radius**2


def _run_mask() -> np.ndarray:
    """(1, N) mask whose runs are 1..70 pixels long (4..280 values: every length-field boundary)."""
    runs = [1, 2, 3, 4, 5, 6, 63, 64, 65, 66, 70, 1, 1, 2]
    return np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])[None, :]


def _long_runs() -> np.ndarray:
    """(1, N) mask with runs of 16384, 16385, 32768 and 40000 pixels (65536, 65540, 131072, 160000 values)."""
    runs = [16384, 16385, 32768, 40000, 3]
    return np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])[None, :]


_RNG = np.random.default_rng(1234)
MASKS: dict[str, np.ndarray] = {
    "empty": np.zeros((17, 23), bool),
    "full": np.ones((40, 40), bool),
    "one_pixel_on": np.ones((1, 1), bool),
    "one_pixel_off": np.zeros((1, 1), bool),
    "single_pixel_in_9x9": np.pad(np.ones((1, 1), bool), 4),
    "row_1xN": _RNG.random((1, 57)) < 0.5,
    "col_Nx1": _RNG.random((61, 1)) < 0.5,
    "disc": _disc(101, 77, 30),
    "checkerboard": np.indices((33, 32)).sum(0) % 2 == 1,
    "noise_05": _RNG.random((64, 64)) < 0.05,
    "noise_50": _RNG.random((64, 64)) < 0.5,
    "noise_95": _RNG.random((64, 64)) < 0.95,
    "run_lengths": _run_mask(),
    "long_runs": _long_runs(),
    "ones_300x300": np.ones((300, 300), bool),  # one run of 360000 values: 5 pieces of 65536 + 32320
    "hole_300x300": np.ones((300, 300), bool) & (np.arange(300 * 300).reshape(300, 300) != 45123),
    "full_10x10_aligned": np.ones((10, 10), bool),  # 53 + 27 bits = 80: a whole padding byte
}


def _bits_to_ints(bits: str) -> list[int]:
    """Pack a '0'/'1' string into bytes, zero-padding the last one."""
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def _header(num: int, sizes: tuple[int, int, int, int] = (3, 4, 8, 16), word: int = 8) -> str:
    return f"{num:032b}{word - 1:05b}" + "".join(f"{s - 1:04b}" for s in sizes)


# --------------------------------------------------------------------------------------------------
# Encoding: byte-for-byte equality with the SDK
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MASKS))
def test_encode_mask_matches_sdk(name: str) -> None:
    brush = _brush()
    mask = MASKS[name]
    expected = brush.mask2rle(mask.astype(np.uint8) * 255)
    assert encode_mask(mask) == expected
    assert encode_mask(mask.astype(np.uint8)) == expected  # 0/1
    assert encode_mask(mask.astype(np.uint8) * 255) == expected  # 0/255
    assert encode_mask(np.asfortranarray(mask)) == expected  # non-C-contiguous input


def test_padding_rule() -> None:
    # 53 header bits + one 27-bit run token = 80 bits: the SDK still appends a whole zero byte.
    rle = encode_mask(np.ones((10, 10), bool))
    assert len(rle) == 11 and rle[-1] == 0
    # 1x1 mask: 53 + 14 = 67 bits -> 5 padding bits, 9 bytes.
    assert len(encode_mask(np.ones((1, 1), bool))) == 9


def test_encode_alpha_matches_sdk() -> None:
    brush = _brush()
    rng = np.random.default_rng(7)
    soft = np.clip((30 - np.hypot(*np.ogrid[-40:40, -50:50])) * 40, 0, 255).astype(np.uint8)  # 8-px soft edge
    for alpha in (rng.integers(0, 256, (32, 32), dtype=np.uint8), soft, np.full((3, 5), 128, np.uint8)):
        assert encode_alpha(alpha) == brush.mask2rle(alpha)
        assert encode_alpha(alpha.astype(np.int64)) == brush.mask2rle(alpha)


def test_encode_values_matches_sdk_with_literals() -> None:
    brush = _brush()
    rng = np.random.default_rng(3)
    cases = [
        rng.integers(0, 256, 500),  # mostly single-value literals
        rng.integers(0, 3, 700),  # literals and short runs
        np.concatenate([np.zeros(140000, np.int64), rng.integers(0, 256, 9), np.full(65537, 9)]),
        np.array([5]),
    ]
    for values in cases:
        assert encode_values(values) == brush.encode_rle(values)


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MASKS))
def test_round_trip(name: str) -> None:
    mask = MASKS[name]
    decoded = decode_rle(encode_mask(mask), *mask.shape)
    assert decoded.dtype == np.uint8 and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8) * 255)


def test_round_trip_alpha_and_empty_image() -> None:
    alpha = np.random.default_rng(5).integers(0, 256, (48, 37), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rle(encode_alpha(alpha), 48, 37), alpha)
    assert decode_rle(encode_mask(np.zeros((0, 5), bool)), 0, 5).shape == (0, 5)


@pytest.mark.parametrize("name", ["disc", "noise_50", "checkerboard", "run_lengths", "single_pixel_in_9x9"])
def test_decode_matches_sdk_on_sdk_masks(name: str) -> None:
    brush = _brush()
    mask = MASKS[name]
    rle = brush.mask2rle(mask.astype(np.uint8) * 255)
    expected = brush.decode_rle(rle).reshape(*mask.shape, 4)[:, :, 3]
    np.testing.assert_array_equal(decode_rle(rle, *mask.shape), expected)


def test_decode_matches_sdk_on_antialiased_rgba() -> None:
    """Frontend-style data: R = G = B = A = alpha with soft (0..255) edges, encoded by the SDK."""
    brush = _brush()
    dist = np.hypot(*np.ogrid[-30:30, -36:36]) - 20
    alpha = np.clip(128 - dist * 64, 0, 255).astype(np.uint8)  # 0, 255 and a ramp in between
    rng = np.random.default_rng(11)
    noisy = alpha.copy()
    edge = (alpha > 0) & (alpha < 255)
    noisy[edge] = rng.integers(1, 255, int(edge.sum()))
    for a in (alpha, noisy):
        rle = brush.encode_rle(np.repeat(a.reshape(-1), 4))
        expected = brush.decode_rle(rle).reshape(*a.shape, 4)[:, :, 3]
        np.testing.assert_array_equal(decode_rle(rle, *a.shape), expected)
        np.testing.assert_array_equal(decode_rle(rle, *a.shape), a)


def test_decode_values_matches_sdk_with_literals() -> None:
    brush = _brush()
    values = np.random.default_rng(9).integers(0, 4, 900)
    rle = brush.encode_rle(values)
    np.testing.assert_array_equal(decode_values(rle), brush.decode_rle(rle))
    np.testing.assert_array_equal(decode_values(rle), values)


def test_decode_multi_value_literal_blocks_and_custom_widths() -> None:
    # Literal blocks of several values (as the JS encoder writes), with non-default widths [2, 5, 7, 12].
    sizes = (2, 5, 7, 12)
    bits = _header(4 * 6, sizes)
    bits += "0" + "00" + f"{3 - 1:02b}" + f"{10:08b}{20:08b}{30:08b}"  # literal block of 3 values
    bits += "1" + "01" + f"{17 - 1:05b}" + f"{200:08b}"  # run of 17
    bits += "0" + "10" + f"{4 - 1:07b}" + f"{1:08b}{2:08b}{3:08b}{4:08b}"  # literal block of 4 values
    expected = np.array([10, 20, 30] + [200] * 17 + [1, 2, 3, 4], np.uint8)
    np.testing.assert_array_equal(decode_values(_bits_to_ints(bits)), expected)
    np.testing.assert_array_equal(decode_rle(_bits_to_ints(bits), 2, 3), expected[3::4].reshape(2, 3))


def test_decode_input_types() -> None:
    mask = MASKS["disc"]
    rle = encode_mask(mask)
    expected = decode_rle(rle, *mask.shape)
    for variant in (bytes(rle), bytearray(rle), tuple(rle), np.array(rle), np.array(rle, np.uint8)):
        np.testing.assert_array_equal(decode_rle(variant, *mask.shape), expected)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_wrong_size_raises() -> None:
    rle = encode_mask(np.ones((20, 30), bool))
    with pytest.raises(RLEError, match="2400 values but a 20x31 RGBA image needs 2480"):
        decode_rle(rle, 20, 31)
    with pytest.raises(RLEError, match="needs 2520"):
        decode_rle(rle, 21, 30)
    assert isinstance(RLEError("x"), ValueError)


def test_same_pixel_count_other_shape_is_not_detectable() -> None:
    # The header only stores the value count: 20x30 and 30x20 both hold 2400 values.
    rle = encode_mask(np.ones((20, 30), bool))
    assert decode_rle(rle, 30, 20).shape == (30, 20)


@pytest.mark.parametrize(
    "rle",
    [[], [0, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9], ["a", "b"], [300] * 10, [-1] * 10, [[1, 2], [3, 4]], [0.5] * 9],
    ids=["empty", "short", "bad_count", "strings", "over_255", "negative", "nested", "floats"],
)
def test_malformed_raises(rle: list) -> None:
    with pytest.raises(RLEError):
        decode_rle(rle, 2, 2)


def test_random_garbage_raises() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        garbage = rng.integers(0, 256, int(rng.integers(1, 400))).tolist()
        with pytest.raises(RLEError):
            decode_rle(garbage, 16, 16)


def test_garbage_body_raises_or_keeps_shape() -> None:
    # A correct header with a random body may parse (any bitstream does); it must never hang or
    # return another shape.
    rng = np.random.default_rng(1)
    header = _bits_to_ints(_header(16 * 16 * 4))[:6]
    for _ in range(30):
        body = rng.integers(0, 256, int(rng.integers(1, 300))).tolist()
        try:
            out = decode_rle(header + body, 16, 16)
        except RLEError:
            continue
        assert out.shape == (16, 16) and out.dtype == np.uint8


def test_truncated_raises() -> None:
    for mask in (MASKS["disc"], MASKS["noise_50"], MASKS["ones_300x300"]):
        rle = encode_mask(mask)
        for cut in (3, 4, len(rle) - 8):  # padding is at most one byte, so these cut real tokens
            with pytest.raises(RLEError, match="truncated"):
                decode_rle(rle[:-cut], *mask.shape)


def test_overrun_and_word_size_raise() -> None:
    overrun = _bits_to_ints(_header(4) + "1" + "00" + "111" + f"{255:08b}")  # run of 8 into 4 values
    with pytest.raises(RLEError, match="produce 8 values"):
        decode_values(overrun)
    wide = _bits_to_ints(_header(4, word=16) + "1" + "00" + "011" + f"{255:016b}")
    with pytest.raises(RLEError, match="word size 16"):
        decode_values(wide)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_mask(np.zeros((2, 2, 4), bool))
    with pytest.raises(ValueError):
        encode_alpha(np.full((2, 2), 256))
    with pytest.raises(ValueError):
        encode_alpha(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        encode_values([])
