"""Parse Label Studio webhook bodies into typed events (pure functions: no I/O, no logging).

Label Studio POSTs ``{"action": ACTION, **payload}`` to ``<backend>/webhook`` for every project event
(``ls:webhooks/utils.py::run_webhook``). The actions the fit path uses and their payloads
(``ls:webhooks/models.py::WebhookAction.ACTIONS``, ``ls:webhooks/serializers_for_hooks.py``):

==========================  ===================================================================================
action                      payload
==========================  ===================================================================================
``ANNOTATION_CREATED``      ``annotation``: the Annotation row (``id``, ``result`` list, ``task`` id, ``project``
``ANNOTATION_UPDATED``      id, ``was_cancelled``, ``ground_truth``, ``completed_by`` ...); ``task``: the Task row
                            (``id``, ``data`` {...}, ``project`` id ...); ``project``: the Project row (``id``,
                            ``label_config`` ...)
``ANNOTATIONS_DELETED``     ``annotations``: ``[{"id": int}, ...]`` (plural key, a list of id-only objects, from
                            the single DELETE ``/api/annotations/<id>`` and from the Data Manager's bulk action
                            alike); ``project``: the Project row
``START_TRAINING``          ``project`` only (sent by ``POST /api/ml/<id>/train``, the "Start Training" button)
anything else               answered 200 and ignored (:class:`Ignored`)
==========================  ===================================================================================

:func:`parse_event` turns a body into one of :class:`AnnotationEvent`, :class:`DeleteEvent`, :class:`TrainEvent`
or :class:`Ignored`, or raises :class:`~backend.common.errors.BadRequest` when the body is malformed (not an object, no
``action`` string, or a known action whose required fields are missing or of the wrong type).

For created/updated annotations every ``brushlabels`` result with ``value.format == "rle"`` becomes one
:class:`AnnotationSample`: the brush RLE is decoded at ``(original_height, original_width)``, pixels with alpha
>= :data:`FOREGROUND_ALPHA` are foreground (brush strokes are anti-aliased), the label is
``value.brushlabels[0]`` and the image reference is ``task.data[key]`` where ``key`` is the ``value`` of the
``<Image>`` tag named by the result's ``to_name`` (or, without a usable label config, the first task data string
that looks like an image reference). Anything that does not become a sample (a cancelled/skipped annotation,
results that are not brush masks, an empty mask, a corrupt RLE, an unresolvable image) is described by one
reason string in :attr:`AnnotationEvent.skipped` for the caller to log; a bad region never fails the whole event.

A cancelled annotation, or one with no usable brush region, still yields an :class:`AnnotationEvent` (with no
samples): storing it replaces, i.e. removes, whatever the annotation contributed before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from backend.common.errors import BadRequest, Unprocessable
from backend.images.sources import CLOUD_SCHEMES, LS_PATH_PREFIXES
from backend.ls.ids import IdError, id_or_none, parse_id
from backend.ls.labelconfig import LabelConfig, parse_label_config
from backend.ls.rle import RLEError, decode_rle

__all__ = [
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "START_TRAINING",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_TOTAL_PIXELS",
    "FOREGROUND_ALPHA",
    "AnnotationEvent",
    "AnnotationSample",
    "DeleteEvent",
    "Ignored",
    "TrainEvent",
    "WebhookEvent",
    "parse_event",
]

ANNOTATION_CREATED = "ANNOTATION_CREATED"
ANNOTATION_UPDATED = "ANNOTATION_UPDATED"
ANNOTATIONS_DELETED = "ANNOTATIONS_DELETED"
START_TRAINING = "START_TRAINING"

FOREGROUND_ALPHA = 128
"""Alpha (0..255) from which a brush pixel counts as foreground."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest mask (height * width) decoded; ``/webhook`` is unauthenticated, so a region claiming more is skipped."""

DEFAULT_MAX_TOTAL_PIXELS = 250_000_000
"""Largest number of pixels decoded over all regions of one event (about that many bytes of masks)."""

MAX_ACTION_CHARS = 200

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".jfif")


# -- events ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AnnotationSample:
    """One object of a submitted annotation: a brush mask and what it belongs to.

    Attributes:
        project_id: Label Studio project id.
        task_id: Label Studio task id.
        annotation_id: Label Studio annotation id.
        region_id: the result's ``id`` (unique within the annotation; ``result-<index>`` when the result has none).
        label: ``value.brushlabels[0]``.
        image_url: the task's image reference as Label Studio stores it (``/data/upload/...``, ``s3://...``,
            ``http(s)://...``); fetch it with :meth:`backend.images.loader.ImageLoader.load`.
        mask: ``(H, W)`` bool, ``H = original_height`` and ``W = original_width`` (the image's natural size,
            EXIF orientation applied); True where the brush alpha is >= :data:`FOREGROUND_ALPHA`. Never empty.
    """

    project_id: int
    task_id: int
    annotation_id: int
    region_id: str
    label: str
    image_url: str
    mask: np.ndarray


@dataclass(frozen=True)
class AnnotationEvent:
    """``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``: the annotation's current samples.

    Attributes:
        action: the webhook action.
        project_id, task_id, annotation_id: Label Studio ids.
        samples: one :class:`AnnotationSample` per usable brush region (possibly none).
        skipped: one human-readable reason per thing that was ignored (for the log).
        cancelled: the annotation was skipped in Label Studio (``was_cancelled``); it has no samples then.
    """

    action: str
    project_id: int
    task_id: int
    annotation_id: int
    samples: tuple[AnnotationSample, ...] = ()
    skipped: list[str] = field(default_factory=list)
    cancelled: bool = False


@dataclass(frozen=True)
class DeleteEvent:
    """``ANNOTATIONS_DELETED``: the ids of the deleted annotations (possibly none); ``project_id`` when sent."""

    annotation_ids: tuple[int, ...]
    project_id: int | None = None


@dataclass(frozen=True)
class TrainEvent:
    """``START_TRAINING``: the project whose samples should be used for fine-tuning."""

    project_id: int


@dataclass(frozen=True)
class Ignored:
    """Any other action: answered 200 and not acted on."""

    action: str


WebhookEvent: TypeAlias = AnnotationEvent | DeleteEvent | TrainEvent | Ignored


# -- field helpers -----------------------------------------------------------------------------------------------------


def _bad(action: str, message: str) -> BadRequest:
    return BadRequest(f"{action} webhook: {message}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_id(obj: Mapping[str, Any], key: str, action: str, where: str) -> int:
    """``obj[key]`` as a Label Studio id (:func:`backend.ls.ids.parse_id`); a 400 when it is missing or not one."""
    if key not in obj or obj[key] is None:
        raise _bad(action, f"'{where}.{key}' is missing")
    try:
        return parse_id(obj[key])
    except IdError as exc:
        raise _bad(action, f"'{where}.{key}' {exc}") from None


def _require_object(body: Mapping[str, Any], key: str, action: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        raise _bad(action, f"the payload has no '{key}' object")
    if not isinstance(value, Mapping):
        raise _bad(action, f"'{key}' must be an object, got {type(value).__name__}")
    return value


def _optional_project(body: Mapping[str, Any], action: str) -> Mapping[str, Any] | None:
    project = body.get("project")
    if project is None:
        return None
    if not isinstance(project, Mapping):
        raise _bad(action, f"'project' must be an object, got {type(project).__name__}")
    return project


def _positive_int(value: Any) -> int | None:
    """An image dimension: a positive int or an integral float (``300.0``); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def _looks_like_image(value: str) -> bool:
    text = value.strip()
    if not text or len(text) > 8192:
        return False
    lowered = text.lower()
    scheme = lowered.split("://", 1)[0] if "://" in lowered else ""
    if scheme in CLOUD_SCHEMES or lowered.startswith("data:image/"):
        return True
    if text.startswith(LS_PATH_PREFIXES) or text.startswith("upload/"):
        return True
    if scheme in ("http", "https") and ("/data/local-files" in lowered or "/data/upload/" in lowered):
        return True
    path = lowered.split("?", 1)[0].split("#", 1)[0]
    return scheme in ("http", "https", "file", "") and path.endswith(_IMAGE_EXTENSIONS)


def _guess_image_ref(data: Mapping[str, Any]) -> str | None:
    """The first task data string that looks like an image reference (the ``image`` key first)."""
    candidates = [data["image"]] if "image" in data else []
    candidates += [v for k, v in data.items() if k != "image"]
    for value in candidates:
        if isinstance(value, str) and _looks_like_image(value):
            return value.strip()
    return None


# -- annotation parsing ------------------------------------------------------------------------------------------------


class _ImageResolver:
    """Finds the image reference of a region's ``to_name`` in the task data (memoised per ``to_name``)."""

    def __init__(self, label_config: Any, data: Mapping[str, Any]) -> None:
        self.data = data
        self.config: LabelConfig | None = None
        if isinstance(label_config, str) and label_config.strip():
            try:
                self.config = parse_label_config(label_config)
            except Unprocessable:
                self.config = None  # fall back to guessing from the task data
        self._memo: dict[tuple[str | None, int | None], tuple[str | None, str]] = {}

    def resolve(self, to_name: Any, item_index: Any) -> tuple[str | None, str]:
        """``(image reference or None, reason when None)``."""
        key = (to_name if isinstance(to_name, str) else None, id_or_none(item_index))
        if key not in self._memo:
            self._memo[key] = self._resolve(*key)
        return self._memo[key]

    def _resolve(self, to_name: str | None, item_index: int | None) -> tuple[str | None, str]:
        if self.config is not None and self.config.images:
            try:
                data_key = self.config.image_key(to_name)
            except Unprocessable as exc:
                return None, exc.message
            value = self.data.get(data_key)
            if isinstance(value, list) and item_index is not None:  # a list of images, region on item_index
                value = value[item_index] if item_index < len(value) else None
            if isinstance(value, str) and value.strip():
                return value.strip(), ""
            return None, f"task data has no image string under {data_key!r} (the <Image> of to_name {to_name!r})"
        guess = _guess_image_ref(self.data)
        if guess is None:
            return None, "no usable label_config and no task data value looks like an image reference"
        return guess, ""


def _region_id(item: Mapping[str, Any], index: int, seen: set[str]) -> str:
    raw = item.get("id")
    base = raw if isinstance(raw, str) and raw else (str(raw) if id_or_none(raw) is not None else f"result-{index}")
    region_id, n = base[:200], 2
    while region_id in seen:
        region_id, n = f"{base[:200]}#{n}", n + 1
    seen.add(region_id)
    return region_id


def _parse_region(
    item: Mapping[str, Any], resolver: _ImageResolver, max_pixels: int, budget: list[int]
) -> tuple[str, str, np.ndarray] | str:
    """``(label, image_url, mask (H, W) bool)`` of one brushlabels result, or the reason it is skipped.

    ``budget`` is a one-element list holding the pixels the event may still decode; it is reduced here.
    """
    value = item.get("value")
    if not isinstance(value, Mapping):
        return "its 'value' is not an object"
    if value.get("format") != "rle":
        return f"value.format is {_short(value.get('format'))}, not 'rle'"
    labels = value.get("brushlabels", value.get("labels"))
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str) or not labels[0]:
        return f"value.brushlabels is {_short(labels)}, not a non-empty list of label names"
    height, width = _positive_int(item.get("original_height")), _positive_int(item.get("original_width"))
    if height is None or width is None:
        return (f"original_height/original_width are {_short(item.get('original_height'))}/"
                f"{_short(item.get('original_width'))}, not positive integers")
    if height * width > max_pixels:
        return f"mask of {height}x{width} pixels is larger than the limit of {max_pixels}"
    if height * width > budget[0]:
        return "the event's masks together exceed its limit of decoded pixels (max_total_pixels)"
    rle = value.get("rle")
    if not isinstance(rle, list | tuple) or not rle:
        return "value.rle is missing or not a list of byte values"
    image_url, reason = resolver.resolve(item.get("to_name"), item.get("item_index"))
    if image_url is None:
        return reason
    budget[0] -= height * width
    try:
        alpha = decode_rle(rle, height, width)
    except RLEError as exc:
        return f"corrupt brush RLE: {exc}"
    mask = alpha >= FOREGROUND_ALPHA
    if not mask.any():
        return f"empty mask (no pixel with alpha >= {FOREGROUND_ALPHA})"
    return labels[0], image_url, mask


def _parse_annotation(
    body: Mapping[str, Any], action: str, max_pixels: int, max_total_pixels: int
) -> AnnotationEvent:
    annotation = _require_object(body, "annotation", action)
    task = _require_object(body, "task", action)
    project = _optional_project(body, action)
    annotation_id = _require_id(annotation, "id", action, "annotation")
    task_id = _require_id(task, "id", action, "task")
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise _bad(action, f"'task.data' must be an object, got {type(data).__name__}")
    if "task" in annotation and annotation["task"] is not None:
        if isinstance(annotation["task"], Mapping):  # some serializers nest the task
            linked = _require_id(annotation["task"], "id", action, "annotation.task")
        else:
            linked = _require_id(annotation, "task", action, "annotation")
        if linked != task_id:
            raise _bad(action, f"'annotation.task' ({linked}) does not match 'task.id' ({task_id})")

    project_id = None
    for source, where in ((project, "project"), (annotation, "annotation"), (task, "task")):
        key = "id" if where == "project" else "project"
        if source is not None and source.get(key) is not None:
            project_id = _require_id(source, key, action, where)
            break
    if project_id is None:
        raise _bad(action, "no project id ('project.id', 'annotation.project' or 'task.project')")

    cancelled = annotation.get("was_cancelled")
    if cancelled is not None and not isinstance(cancelled, bool):
        raise _bad(action, f"'annotation.was_cancelled' must be a boolean, got {_short(cancelled)}")
    result = annotation.get("result")
    if cancelled:
        return AnnotationEvent(action, project_id, task_id, annotation_id, (),
                               [f"annotation {annotation_id} was skipped (was_cancelled): nothing to learn from"],
                               cancelled=True)
    if not isinstance(result, list):
        raise _bad(action, f"'annotation.result' must be a list, got {type(result).__name__}")

    resolver = _ImageResolver(project.get("label_config") if project is not None else None, data)
    samples: list[AnnotationSample] = []
    skipped: list[str] = []
    other_types: Counter[str] = Counter()
    seen: set[str] = set()
    budget = [max_total_pixels]
    for index, item in enumerate(result):
        if not isinstance(item, Mapping):
            skipped.append(f"annotation {annotation_id} result {index}: not an object")
            continue
        kind = item.get("type")
        if kind != "brushlabels":
            other_types[kind if isinstance(kind, str) else repr(kind)] += 1
            continue
        region_id = _region_id(item, index, seen)
        parsed = _parse_region(item, resolver, max_pixels, budget)
        if isinstance(parsed, str):
            skipped.append(f"annotation {annotation_id} region {region_id!r}: {parsed}")
            continue
        label, image_url, mask = parsed
        samples.append(AnnotationSample(project_id, task_id, annotation_id, region_id, label, image_url, mask))
    if other_types:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(other_types.items()))
        skipped.append(f"annotation {annotation_id}: {sum(other_types.values())} result(s) without a brush mask "
                       f"({kinds})")
    if not result:
        skipped.append(f"annotation {annotation_id}: empty result")
    return AnnotationEvent(action, project_id, task_id, annotation_id, tuple(samples), skipped)


def _parse_delete(body: Mapping[str, Any], action: str) -> DeleteEvent:
    project = _optional_project(body, action)
    project_id = id_or_none(project.get("id")) if project is not None else None
    if "annotations" in body:
        items = body["annotations"]
        if not isinstance(items, list):
            raise _bad(action, f"'annotations' must be a list of {{'id': ...}} objects, got {type(items).__name__}")
        where = "annotations[]"
    elif "annotation" in body:  # tolerated: a single object (not what Label Studio sends)
        items = [body["annotation"]]
        where = "annotation"
    else:
        raise _bad(action, "the payload has no 'annotations' list")
    ids: list[int] = []
    for item in items:
        bare = None if isinstance(item, Mapping) else id_or_none(item)
        if isinstance(item, Mapping):
            ids.append(_require_id(item, "id", action, where))
        elif bare is not None:  # a bare id
            ids.append(bare)
        else:
            raise _bad(action, f"every entry of '{where}' must be an object with an integer 'id', got {_short(item)}")
    return DeleteEvent(tuple(dict.fromkeys(ids)), project_id)


def _parse_train(body: Mapping[str, Any], action: str) -> TrainEvent:
    project = _require_object(body, "project", action)
    return TrainEvent(_require_id(project, "id", action, "project"))


def parse_event(
    body: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS
) -> WebhookEvent:
    """Parse one webhook body.

    Args:
        body: the decoded JSON body, ``{"action": str, ...payload}``.
        max_pixels: brush regions whose ``original_height * original_width`` exceeds this are skipped (not
            decoded); use the service's ``MAX_IMAGE_PIXELS``.
        max_total_pixels: at most this many pixels are decoded over all regions of one event (the masks are held
            in memory as ``(H, W)`` bool, one byte per pixel); regions beyond it are skipped.
    Returns:
        :class:`AnnotationEvent` (created/updated), :class:`DeleteEvent`, :class:`TrainEvent` or :class:`Ignored`.
    Raises:
        BadRequest: the body is not an object, has no ``action`` string, or a known action lacks a required field
            or has one of the wrong type. Per-region problems never raise; they are listed in ``skipped``.
    """
    if not isinstance(body, Mapping):
        raise BadRequest(f"webhook body must be a JSON object with an 'action' string, got {type(body).__name__}")
    action = body.get("action")
    if not isinstance(action, str) or not action.strip():
        raise BadRequest("webhook body must be a JSON object with an 'action' string")
    if len(action) > MAX_ACTION_CHARS:
        raise BadRequest(f"webhook 'action' is longer than {MAX_ACTION_CHARS} characters")
    if action in (ANNOTATION_CREATED, ANNOTATION_UPDATED):
        return _parse_annotation(body, action, max_pixels, max_total_pixels)
    if action == ANNOTATIONS_DELETED:
        return _parse_delete(body, action)
    if action == START_TRAINING:
        return _parse_train(body, action)
    return Ignored(action)
