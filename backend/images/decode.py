"""Image bytes to pixels: Pillow with a format allow-list and a pixel limit, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from backend.images.errors import ImageDecodeError, ImageTooLarge

__all__ = ["ALLOWED_FORMATS", "decode_image", "pillow_formats", "to_rgb_array"]

# Decoders we accept: the formats browsers show plus TIFF; exotic ones (EPS runs Ghostscript) are not offered.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


def pillow_formats(max_pixels: int) -> tuple[str, ...]:
    """Prepare Pillow for images of up to ``max_pixels``; returns the :data:`ALLOWED_FORMATS` this Pillow reads.

    Pillow refuses images over 2x ``Image.MAX_IMAGE_PIXELS`` inside ``Image.open``: that limit is raised to at least
    ``max_pixels``, so that our own check (with a clear message) decides.
    """
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def decode_image(data: bytes, max_pixels: int, formats: tuple[str, ...]) -> np.ndarray:
    """Bytes to a read-only ``HxWx3`` uint8 array with the pixel limit, the format allow-list (``formats``, from
    :func:`pillow_formats`) and EXIF orientation; raises :class:`ImageTooLarge` or :class:`ImageDecodeError`."""
    # No warnings.catch_warnings here (it is not thread-safe): Pillow only warns above MAX_IMAGE_PIXELS, which
    # pillow_formats keeps >= max_pixels, and such images are refused below anyway.
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has too many pixels (limit {max_pixels:,})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"the downloaded data ({len(data):,} bytes) is not a supported image "
            f"({', '.join(formats)})"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"cannot read the image header: {exc}") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"the image has an invalid size {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} (MAX_IMAGE_PIXELS)"
            )
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"the image has too many pixels (limit {max_pixels:,})") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageDecodeError(f"the image is corrupt or truncated: {exc}") from exc
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
            oriented = image
        try:
            rgb = to_rgb_array(oriented)
        except (OSError, ValueError) as exc:
            raise ImageDecodeError(f"cannot convert a {image.mode} image to RGB: {exc}") from exc
    rgb.setflags(write=False)
    return rgb


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit / 32-bit / float single-channel data to uint8 (16-bit: divide by 257; others by their range)."""
    if mode.startswith("I;16"):
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    data = arr.astype(np.float64)
    finite = data[np.isfinite(data)]
    top = float(finite.max()) if finite.size else 0.0
    if mode == "F" and top <= 1.0:
        scale = 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.clip(np.nan_to_num(data * scale), 0, 255).round().astype(np.uint8)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow image to a contiguous ``HxWx3`` uint8 array.

    Grey, palette, CMYK and YCbCr are converted by Pillow; transparency (RGBA, LA, PA, palette with a transparent
    index) is composited over white; 16-bit and float single-channel images are scaled to 0-255 (Pillow's own
    conversion would clip them to 255).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
