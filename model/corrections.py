"""What a corrective click may change: local merging of the new map and the click guarantee.

Both are pure functions on image-sized maps, applied by :class:`model.predictor.FCFIPredictor` after the network
pass. They make a corrective click *local*: an annotator who clicks to fix one place should not see the mask move
somewhere else, and should never see the clicked pixel on the wrong side.

* :func:`local_change` (used from the second click on) says where the network's new map is taken: only in the
  parts of the change that reach the newest click; the previous map stands everywhere else. The idea is FocalClick's
  progressive merge (Chen et al., CVPR 2022); this is our own code of it on 8-connected parts of the changed pixels.
* :func:`guarantee_clicks` puts every click's own neighbourhood on its side of the threshold in the answered map: a
  negative click's disk leaves the mask, a positive click's disk joins it, the newer click winning where they meet.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from model.clicks import Click

#: A changed part counts as the newest click's when it comes within this share of the image diagonal of the click
#: (at least :data:`MERGE_MIN_RADIUS` pixels): a click on a missed part is answered by a part that holds it or
#: touches it, not by one across the image.
MERGE_RADIUS_FRAC = 0.01
MERGE_MIN_RADIUS = 3


def _disk(shape: tuple[int, int], click: Click, radius: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """``(window, disk)``: the slices of the image window around ``click`` and the bool disk of ``radius`` inside it,
    so a caller touches ``(2 radius + 1)^2`` pixels per click, not the whole image (this runs on every click)."""
    h, w = shape
    cx, cy, r = min(int(click.x), w - 1), min(int(click.y), h - 1), int(radius)
    y0, x0 = max(cy - r, 0), max(cx - r, 0)
    window = (slice(y0, min(cy + r + 1, h)), slice(x0, min(cx + r + 1, w)))
    out = np.zeros((window[0].stop - y0, window[1].stop - x0), np.uint8)
    cv2.circle(out, (cx - x0, cy - y0), r, 1, thickness=-1)
    return window, out.view(bool)


def merge_radius(shape: tuple[int, int]) -> int:
    """The reach (pixels) of :func:`local_change` on an image of ``shape`` (H, W)."""
    return max(MERGE_MIN_RADIUS, int(round(MERGE_RADIUS_FRAC * float(np.hypot(*shape)))))


def local_change(prev_mask: np.ndarray, new_mask: np.ndarray, click: Click) -> np.ndarray | None:
    """Where the newest click's answer may differ from the previous one.

    Args:
        prev_mask: HxW bool, the mask before the click (what the annotator saw).
        new_mask: HxW bool, the network's mask after it.
        click: the newest click (image pixels).
    Returns:
        HxW bool: the 8-connected parts of ``prev_mask != new_mask`` that come within :func:`merge_radius` of the
        click (take the new map there, the previous one elsewhere); None when every changed part does (take the new
        map everywhere). All False when none does: the click changed nothing near it, so nothing changes (the
        guarantee answers the click itself).
    """
    changed = prev_mask != new_mask
    if not changed.any():
        return None
    count, labels = cv2.connectedComponents(changed.view(np.uint8), connectivity=8)
    window, near = _disk(changed.shape, click, merge_radius(changed.shape))
    keep = np.zeros(count, bool)
    keep[np.unique(labels[window][near & changed[window]])] = True
    keep[0] = False
    if keep[1:].all():
        return None
    return keep[labels]


#: Radius (image pixels) of the neighbourhood :func:`guarantee_clicks` holds on a click's side: the click's pixel and
#: its immediate neighbours.
GUARANTEE_RADIUS = 1


def guarantee_clicks(probs: np.ndarray, clicks: Sequence[Click], threshold: float,
                     radius: int = GUARANTEE_RADIUS) -> np.ndarray:
    """``probs`` with every click's disk of ``radius`` on the click's side of ``threshold``.

    Args:
        probs: HxW float32 in [0, 1].
        clicks: chronological clicks (image pixels); a later click wins where disks overlap.
        radius: disk radius in pixels (0: the click's pixel alone).
    Returns:
        ``probs`` itself when every disk already is on its side, else a copy where the pixels on the wrong side are
        set just across the threshold (negative: just below it; positive: just above), so the map stays a
        probability map and changes no more than needed.
    """
    below = np.nextafter(np.float32(threshold), np.float32(0))
    above = np.nextafter(np.float32(threshold), np.float32(1))
    out = probs
    for c in clicks:
        window, disk = _disk(probs.shape, c, radius)
        part = out[window]
        wrong = disk & ((part <= threshold) if c.positive else (part > threshold))
        if wrong.any():
            if out is probs:
                out = probs.copy()
            out[window][wrong] = above if c.positive else below
    return out
