"""Read what the backend needs from a project's label config XML.

The output tag is a ``BrushLabels`` whose label values match the smart ``KeyPointLabels`` (the
layout of ``label_config.xml`` and of the SAM peer backends).
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from backend.common.errors import Unprocessable

MAX_CONFIG_BYTES = 1_000_000


@dataclass(frozen=True)
class BrushTag:
    from_name: str
    to_names: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    brushes: tuple[BrushTag, ...]
    images: dict[str, str]  # Image tag name -> task data key (``$image`` -> ``image``)

    def brush_for(self, label: str, to_name: str | None) -> BrushTag:
        """The BrushLabels tag that holds ``label`` (and points at ``to_name`` when given)."""
        if not self.brushes:
            raise Unprocessable("the project's label config has no <BrushLabels> tag, so there is nowhere to "
                                "put a mask; add one with the same labels as the smart <KeyPointLabels>")
        candidates = [b for b in self.brushes if to_name is None or to_name in b.to_names] or list(self.brushes)
        for brush in candidates:
            if label in brush.labels:
                return brush
        known = sorted({lab for b in candidates for lab in b.labels})
        raise Unprocessable(f"label {label!r} is not a label of any <BrushLabels> tag (known: {', '.join(known)}); "
                            "give the smart keypoint labels the same values as the brush labels")

    def image_key(self, to_name: str | None) -> str:
        """The task data key of the image a region points at."""
        if to_name and to_name in self.images:
            return self.images[to_name]
        if len(self.images) == 1 or (self.images and to_name is None):
            return next(iter(self.images.values()))
        if not self.images:
            raise Unprocessable("the project's label config has no <Image> tag")
        raise Unprocessable(f"no <Image name={to_name!r}> in the label config")


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Parse a label config. Raises :class:`Unprocessable` on invalid XML."""
    if not isinstance(xml, str) or not xml.strip():
        raise Unprocessable("label_config is missing or empty")
    if len(xml) > MAX_CONFIG_BYTES or "<!DOCTYPE" in xml.upper() or "<!ENTITY" in xml.upper():
        raise Unprocessable("label_config is too large or declares a DTD")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise Unprocessable(f"label_config is not valid XML: {exc}") from None
    brushes, images = [], {}
    for el in root.iter():
        tag = el.tag.lower()
        if tag == "brushlabels":
            labels = tuple(child.get("value", "") for child in el if child.tag.lower() == "label")
            to_names = tuple(n.strip() for n in el.get("toName", "").split(",") if n.strip())
            brushes.append(BrushTag(el.get("name", ""), to_names, labels))
        elif tag == "image" and el.get("name"):
            images[el.get("name")] = el.get("value", "$image").lstrip("$")
    return LabelConfig(tuple(brushes), images)
