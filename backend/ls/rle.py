"""Vectorised numpy codec for Label Studio brush masks (``value.format == "rle"``).

The format
----------
Label Studio stores a brush mask as a compressed *bitstream* over the flattened RGBA image of the
task, i.e. ``H * W * 4`` bytes in row-major order (R, G, B, A of pixel 0, then pixel 1, ...).
The stream (the ``@thi.ng/rle-pack`` layout) is written most significant bit first:

* header, 53 bits: the number of values (32 bits), the word size minus one (5 bits, always 7 here:
  the values are bytes) and four 4-bit fields holding the bit widths minus one of the four
  possible length fields (Label Studio uses the widths ``[3, 4, 8, 16]``);
* then tokens until that many values have been produced. A token is a 1-bit kind, a 2-bit index
  choosing one of the four widths, and ``length - 1`` in that many bits. Kind 1 is a *run*: one
  byte follows and is repeated ``length`` times; kind 0 is a *literal block*: ``length`` bytes
  follow, each used once;
* zero bits up to a byte boundary. ``value.rle`` is the resulting list of byte values (ints 0..255).

The reference Python encoder (``label_studio_sdk.converter.brush.encode_rle``) writes every run of
length 1 as a one-byte literal, runs of length 2..8 / 9..16 / 17..256 / above 256 with the 3 / 4 /
8 / 16-bit length field, cuts runs longer than 65536 into 65536-long pieces (the last piece keeps the
16-bit field even when short), and always pads with 1 to 8 zero bits (a whole zero byte when the
stream already ends on a byte boundary). :func:`encode_values` reproduces that output byte for byte.
The JavaScript encoder of the frontend may also write multi-byte literal blocks; the decoder reads
any valid stream (any length-field widths, word size 8).

Masks in practice have R = G = B = A: ``brush.mask2rle`` repeats every pixel value four times, and the
frontend copies alpha into R, G and B before encoding. The frontend colours every pixel whose alpha
byte is non-zero, so :func:`decode_rle` returns the alpha channel.

API
---
* :func:`encode_mask`: boolean/any-dtype mask, non-zero -> 255, zero -> 0 (equals ``mask2rle(m * 255)``);
* :func:`encode_alpha`: uint8 alpha map (0..255, e.g. soft edges) written as is (equals ``mask2rle(a)``);
* :func:`encode_values`: any flat byte sequence (equals ``brush.encode_rle(values)``);
* :func:`decode_rle`: ``value.rle`` -> ``(H, W)`` uint8 alpha map; :func:`decode_values`: all values.

How it is vectorised
--------------------
Encoding finds the runs with ``np.flatnonzero`` on the pixel sequence (a pixel run of length L is an
RGBA run of length 4L), turns every run into a token whose bit pattern and width (at most 32 bits)
are computed with integer arithmetic, and places each token at its bit offset (a cumulative sum of
the widths) by splitting its shifted pattern into 5 byte lanes that are summed into the output with
``np.bincount`` (tokens never share a bit, so the sum is a bitwise OR).

Decoding cannot know where token k starts before it has read token k-1, so it first computes, for
*every* bit position, where the next token would start if one started there (a 24-bit window per bit;
for the default widths a look-up table over its first 19 bits, the longest token header, built once
per process in ~20 ms; other widths use the same arithmetic per bit). The real token starts are the
chain of successors from bit 53: repeated squaring of the successor table gives the K-th successor
(K ~ sqrt(#tokens) / 2), a short Python loop walks the chain K tokens at a time, and K vectorised
steps fill in the tokens between. Values are then gathered from the windows and expanded with
``np.repeat``. Time grows with the size of the RLE (times the log of its token count, for the
squaring), memory linearly with it (peak about 30 bytes per RLE *bit*: a few MB for a noisy 256x256
mask, some hundreds of MB only for pathological multi-megapixel noise), plus the ``(H, W)`` output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "RLEError",
    "RLE_SIZES",
    "decode_rle",
    "decode_values",
    "encode_alpha",
    "encode_mask",
    "encode_values",
]

RLE_SIZES: tuple[int, int, int, int] = (3, 4, 8, 16)
"""Bit widths of the four length fields Label Studio (SDK and frontend) uses."""

_WORD = 8
_HEADER_BITS = 32 + 5 + 4 * 4
# Second header field (21 bits): word size - 1, then the four widths - 1.
_HEADER_TAIL = ((_WORD - 1) << 16) | sum((s - 1) << (12 - 4 * i) for i, s in enumerate(RLE_SIZES))
_MAX_CHUNK = 1 << 16  # longest run one token can hold with a 16-bit length field
_MIN_TOKEN_BITS = 3 + 1 + _WORD  # kind + index + shortest length field + one value


class RLEError(ValueError):
    """Invalid, truncated or mis-sized brush RLE data."""


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of equal values in a 1-D array.

    Args:
        flat: ``(N,)`` array, N >= 1.
    Returns:
        ``(lengths (R,) int64 >= 1, values (R,) same dtype as flat)``; lengths sum to N.
    """
    starts = np.flatnonzero(flat[1:] != flat[:-1])
    starts += 1
    bounds = np.empty(starts.size + 2, np.int64)
    bounds[0] = 0
    bounds[1:-1] = starts
    bounds[-1] = flat.size
    values = flat[bounds[:-1]]
    return np.diff(bounds), values


def _pack(lengths: np.ndarray, values: np.ndarray, num: int) -> list[int]:
    """Assemble the bitstream for runs of byte values exactly as the SDK encoder does.

    Args:
        lengths: ``(R,)`` int64 run lengths >= 1 over the flat value sequence, summing to ``num``.
        values: ``(R,)`` uint8 value of each run.
        num: total number of values (< 2**32).
    Returns:
        ``value.rle``: list of ints 0..255.
    """
    lengths = lengths.astype(np.int64, copy=False)
    vals = values.astype(np.uint64)
    idx = (lengths > 8).astype(np.int64) + (lengths > 16) + (lengths > 256)
    # Runs above 65536 become ceil(L / 65536) pieces: 65536, ..., 65536, remainder (1..65536).
    pieces = np.where(lengths > _MAX_CHUNK, (lengths + _MAX_CHUNK - 1) // _MAX_CHUNK, 1)
    if pieces.size and pieces.max() > 1:
        first = np.cumsum(pieces) - pieces  # index of the first piece of each run
        owner = np.repeat(np.arange(lengths.size), pieces)
        is_last = np.zeros(int(pieces.sum()), bool)
        is_last[first + pieces - 1] = True
        piece_len = np.where(is_last, lengths[owner] - (pieces[owner] - 1) * _MAX_CHUNK, _MAX_CHUNK)
        is_run = lengths[owner] > 1
        idx, vals, lengths = idx[owner], vals[owner], piece_len
    else:
        is_run = lengths > 1
    nbits = np.asarray(RLE_SIZES, np.int64)[idx]
    width = 3 + nbits + _WORD  # 14, 15, 19 or 27 bits; a literal (L == 1) is 14 bits with code == value
    code = (
        (is_run.astype(np.uint64) << (width - 1).astype(np.uint64))
        | (idx.astype(np.uint64) << (width - 3).astype(np.uint64))
        | ((lengths - 1).astype(np.uint64) << np.uint64(_WORD))
        | vals
    )
    # The header as two pseudo-tokens (32 + 21 bits) in front of the body.
    code = np.concatenate([np.array([num, _HEADER_TAIL], np.uint64), code])
    width = np.concatenate([np.array([32, 21], np.int64), width])
    ends = np.cumsum(width)
    offset = ends - width
    nbytes = int(ends[-1]) // 8 + 1  # 1..8 zero padding bits, as the SDK does
    # Left-align every token in a 40-bit field that starts on its first byte, then split it into
    # 5 byte lanes; tokens occupy disjoint bits, so adding lanes into the output is an OR.
    shift = (40 - (offset & 7) - width).astype(np.uint64)
    aligned = code << shift
    first_byte = offset >> 3
    lanes = (aligned[None, :] >> (np.arange(32, -1, -8, dtype=np.uint64)[:, None])) & np.uint64(0xFF)
    where = first_byte[None, :] + np.arange(5)[:, None]
    out = np.bincount(where.ravel(), weights=lanes.ravel().astype(np.float64), minlength=nbytes + 5)
    return out[:nbytes].astype(np.uint8).tolist()


def _check_2d(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {arr.shape}")
    if arr.size * 4 >= 1 << 32:
        raise ValueError(f"{name} of shape {arr.shape} is too large for the 32-bit RLE value count")
    return arr


def _encode_pixels(pixels: np.ndarray, scale: int) -> list[int]:
    """Encode a flat pixel sequence whose every value is repeated 4 times (R = G = B = A).

    Args:
        pixels: ``(N,)`` uint8 pixel values (before scaling).
        scale: multiplier applied to the run values (255 for 0/1 masks, 1 otherwise).
    """
    num = pixels.size * 4
    if pixels.size == 0:
        return _pack(np.zeros(0, np.int64), np.zeros(0, np.uint8), 0)
    lengths, values = _runs(pixels)
    if scale != 1:
        values = values * np.uint8(scale)
    return _pack(lengths * 4, values, num)


def encode_mask(mask: np.ndarray) -> list[int]:
    """Encode a binary mask as Label Studio ``value.rle``.

    Args:
        mask: ``(H, W)`` array of any dtype; non-zero pixels are foreground and written as 255
            (R = G = B = A = 255), zero pixels as 0.
    Returns:
        list of ints 0..255, identical to ``brush.mask2rle((mask != 0).astype(np.uint8) * 255)``.
    """
    mask = _check_2d(mask, "mask")
    pixels = mask if mask.dtype == np.bool_ else mask != 0
    return _encode_pixels(np.ascontiguousarray(pixels).reshape(-1).view(np.uint8), 255)


def encode_alpha(alpha: np.ndarray) -> list[int]:
    """Encode a grey/alpha map (e.g. anti-aliased brush edges) as Label Studio ``value.rle``.

    Args:
        alpha: ``(H, W)`` integer array with values 0..255 (any integer dtype; bool is rejected to
            avoid writing True as 1), written as is with R = G = B = A = value.
    Returns:
        list of ints 0..255, identical to ``brush.mask2rle(alpha.astype(np.uint8))``.
    """
    alpha = _check_2d(alpha, "alpha")
    if alpha.dtype == np.bool_ or not np.issubdtype(alpha.dtype, np.integer):
        raise ValueError(f"alpha must have an integer dtype with values 0..255, got {alpha.dtype}")
    if alpha.dtype != np.uint8:
        if alpha.size and (alpha.min() < 0 or alpha.max() > 255):
            raise ValueError("alpha values must lie in 0..255")
        alpha = alpha.astype(np.uint8)
    return _encode_pixels(np.ascontiguousarray(alpha).reshape(-1), 1)


def encode_values(values: np.ndarray | Sequence[int]) -> list[int]:
    """Encode an arbitrary flat byte sequence (e.g. an interleaved RGBA image).

    Args:
        values: ``(N,)`` integers 0..255, N >= 1 (the SDK cannot encode an empty array either).
    Returns:
        list of ints 0..255, identical to ``brush.encode_rle(values)`` with its default arguments.
    """
    arr = np.asarray(values).reshape(-1)
    if arr.size == 0:
        raise ValueError("cannot encode an empty value sequence")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"values must have an integer dtype, got {arr.dtype}")
    if arr.size >= 1 << 32:
        raise ValueError("too many values for the 32-bit RLE value count")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError("values must lie in 0..255")
        arr = arr.astype(np.uint8)
    lengths, vals = _runs(arr)
    return _pack(lengths, vals, arr.size)


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def _as_bytes(rle: Sequence[int] | bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Validate the RLE container and return it as a ``(nbytes,)`` uint8 array."""
    if isinstance(rle, bytes | bytearray | memoryview):
        return np.frombuffer(rle, np.uint8)
    if isinstance(rle, list | tuple):  # the usual JSON case; bytes() checks the 0..255 range in C
        try:
            return np.frombuffer(bytes(rle), np.uint8)
        except (TypeError, ValueError) as exc:
            raise RLEError(f"RLE must be a flat sequence of ints 0..255: {exc}") from exc
    try:
        arr = np.asarray(rle)
    except (TypeError, ValueError) as exc:
        raise RLEError(f"RLE must be a flat sequence of ints 0..255: {exc}") from exc
    if arr.size == 0:
        return np.zeros(0, np.uint8)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise RLEError(f"RLE must be a flat sequence of ints 0..255, got dtype {arr.dtype} and shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise RLEError("RLE values must lie in 0..255")
        arr = arr.astype(np.uint8)
    return arr


def _read_header(data: np.ndarray) -> tuple[int, np.ndarray]:
    """Return ``(number of values, (4,) int64 length-field widths)``; word size must be 8."""
    if data.size * 8 < _HEADER_BITS:
        raise RLEError(f"RLE too short: {data.size} bytes, the header alone needs 7")
    head = int.from_bytes(data[:7].tobytes(), "big")  # 56 bits, header in the top 53

    def field(start: int, bits: int) -> int:
        return (head >> (56 - start - bits)) & ((1 << bits) - 1)

    num = field(0, 32)
    word = field(32, 5) + 1
    if word != _WORD:
        raise RLEError(f"unsupported RLE word size {word} (brush masks use 8-bit values)")
    sizes = np.array([field(37 + 4 * i, 4) + 1 for i in range(4)], np.int64)
    return num, sizes


def _spans(prefix: np.ndarray, sizes: tuple[int, int, int, int]) -> np.ndarray:
    """Token length in bits of tokens starting with the given 19-bit prefixes (kind, index, length).

    Args:
        prefix: ``(P,)`` int array of 19-bit token prefixes (the longest token header is 3 + 16 bits).
        sizes: the four length-field widths from the header, each 1..16.
    Returns:
        ``(P,)`` int64: ``3 + n + 8`` for a run, ``3 + n + 8 * length`` for a literal block.
    """
    prefix = prefix.astype(np.int64, copy=False)
    nbits = np.asarray(sizes, np.int64)[(prefix >> 16) & 3]
    length = ((prefix >> (16 - nbits)) & ((1 << nbits) - 1)) + 1
    return 3 + nbits + np.where(prefix >> 18 == 1, _WORD, _WORD * length)


@functools.cache
def _default_span_table() -> np.ndarray:
    """``(2**19,)`` int64 token length for every 19-bit prefix with Label Studio's widths (built once)."""
    return _spans(np.arange(1 << 19, dtype=np.int64), RLE_SIZES)


def _segments(data: np.ndarray, num: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse the token stream.

    Args:
        data: ``(nbytes,)`` uint8 RLE bytes, header included.
        num: number of values the tokens must produce (> 0).
        sizes: ``(4,)`` length-field widths 1..16.
    Returns:
        ``(values (S,) uint8, counts (S,) int64 >= 1)``: the decoded sequence is
        ``np.repeat(values, counts)`` and ``counts.sum() == num``.
    Raises:
        RLEError: truncated stream or tokens producing more than ``num`` values.
    """
    total_bits = data.size * 8
    # 24-bit window starting at every bit: bits p .. p+23 (zeros past the end).
    padded = np.zeros(data.size + 3, np.uint32)
    padded[: data.size] = data
    word = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]
    window = ((word[:, None] << np.arange(8, dtype=np.uint32)) >> np.uint32(8)).reshape(-1)
    del word, padded

    # Successor table: where the next token starts if one starts at bit p; total_bits is the end
    # sentinel and maps to itself (positions past the end are clipped to it).
    nxt = np.empty(total_bits + 1, np.intp)
    size_tuple = tuple(int(s) for s in sizes)
    if size_tuple == RLE_SIZES:  # always the case for Label Studio data: one table look-up per bit
        np.take(_default_span_table(), window >> np.uint32(5), out=nxt[:-1])
    else:
        nxt[:-1] = _spans(window >> np.uint32(5), size_tuple)
    nxt[:-1] += np.arange(total_bits)
    nxt[-1] = total_bits
    np.minimum(nxt, total_bits, out=nxt)

    # Walk the chain of token starts from the end of the header, `step` tokens at a time on the
    # step-th successor table (repeated squaring), then fill in the tokens in between.
    max_tokens = max(1, (total_bits - _HEADER_BITS) // _MIN_TOKEN_BITS + 1)
    levels = max(0, math.ceil(math.log2(max_tokens) / 2) - 1)
    step = 1 << levels
    jump = nxt
    for _ in range(levels):
        jump = np.take(jump, jump)
    anchors = []
    pos = _HEADER_BITS
    while pos < total_bits:
        anchors.append(pos)
        pos = int(jump[pos])
    del jump
    if not anchors:
        raise RLEError("RLE truncated: no token after the header")
    chain = np.empty((len(anchors), step), np.intp)
    cur = np.asarray(anchors, np.intp)
    for k in range(step):
        chain[:, k] = cur
        cur = np.take(nxt, cur)
    starts = chain.reshape(-1)
    starts = starts[starts < total_bits]
    del nxt

    head = window[starts]
    tok_run = (head >> np.uint32(23)).astype(bool)
    nbits = sizes[(head >> np.uint32(21)) & np.uint32(3)]
    tok_count = ((head >> (21 - nbits).astype(np.uint32)).astype(np.int64) & ((1 << nbits) - 1)) + 1
    produced = np.cumsum(tok_count)
    last = int(np.searchsorted(produced, num))  # first token reaching num values
    if last == produced.size:
        raise RLEError(f"RLE truncated: the stream holds {int(produced[-1])} of {num} values")
    if produced[last] != num:
        raise RLEError(f"RLE corrupt: tokens produce {int(produced[last])} values, the header says {num}")
    keep = slice(0, last + 1)
    starts, tok_run, nbits, tok_count = starts[keep], tok_run[keep], nbits[keep], tok_count[keep]
    if starts[-1] + 3 + nbits[-1] + _WORD * (1 if tok_run[-1] else tok_count[-1]) > total_bits:
        raise RLEError("RLE truncated: the last token runs past the end of the data")

    first_value = starts + 3 + nbits  # bit position of the token's first value
    if tok_run.all():
        values = window[first_value]
        counts = tok_count
    else:
        per_token = np.where(tok_run, 1, tok_count)  # literal blocks: one segment per value
        owner = np.repeat(np.arange(starts.size), per_token)
        rank = np.arange(owner.size) - np.repeat(np.cumsum(per_token) - per_token, per_token)
        values = window[first_value[owner] + _WORD * rank]
        counts = np.where(tok_run[owner], tok_count[owner], 1)
    return (values >> np.uint32(16)).astype(np.uint8), counts


def decode_values(rle: Sequence[int] | bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode every value of a brush RLE stream (the flattened RGBA image for brush masks).

    Args:
        rle: ``value.rle`` as a list of ints 0..255, bytes or a 1-D integer array.
    Returns:
        ``(num,)`` uint8 array, ``num`` being the count in the header; equals ``brush.decode_rle(rle)``.
    Raises:
        RLEError: malformed, truncated or over-long stream, or a word size other than 8.
    """
    data = _as_bytes(rle)
    num, sizes = _read_header(data)
    if num == 0:
        return np.zeros(0, np.uint8)
    values, counts = _segments(data, num, sizes)
    return np.repeat(values, counts)


def decode_rle(rle: Sequence[int] | bytes | bytearray | memoryview | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode Label Studio ``value.rle`` into the alpha channel of the mask.

    Args:
        rle: ``value.rle`` as a list of ints 0..255, bytes or a 1-D integer array.
        height, width: the image's natural size (``original_height``, ``original_width``).
    Returns:
        ``(height, width)`` uint8 alpha map 0..255 (the frontend shows pixels whose alpha is
        non-zero; anti-aliased strokes have values below 255 at their edges). Equals
        ``brush.decode_rle(rle).reshape(height, width, 4)[:, :, 3]``.
    Raises:
        RLEError: the header's value count is not ``height * width * 4``, or the data is malformed
            or truncated.
    """
    height, width = int(height), int(width)
    if height < 0 or width < 0:
        raise RLEError(f"invalid mask size {height}x{width}")
    data = _as_bytes(rle)
    num, sizes = _read_header(data)
    expected = height * width * 4
    if num != expected:
        raise RLEError(
            f"RLE holds {num} values but a {height}x{width} RGBA image needs {expected}"
            + (f" (that is {num // 4} pixels)" if num % 4 == 0 else "")
        )
    if num == 0:
        return np.zeros((height, width), np.uint8)
    values, counts = _segments(data, num, sizes)
    # Keep only the alpha bytes (positions 3, 7, 11, ...): a segment covering values [s, e)
    # holds the alpha of pixels [s // 4, e // 4).
    ends = np.cumsum(counts)
    alpha_counts = (ends >> 2) - ((ends - counts) >> 2)
    return np.repeat(values, alpha_counts).reshape(height, width)
