"""Parse Label Studio's ``/predict`` payload into what the predictor needs.

A smart-keypoint request carries, in ``params.context.result``, every click so far for one label, in
the order they were made. ``value.x`` / ``value.y`` are percent of the natural image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from backend.common.errors import BadRequest, ServiceError, TooLarge, Unprocessable
from backend.ls.ids import id_or_none
from backend.ls.labelconfig import BrushTag, LabelConfig, parse_label_config
from model import Click


@dataclass(frozen=True)
class PredictRequest:
    tasks: list[dict[str, Any]]
    project: str | None
    label_config: str | None
    context: dict[str, Any] | None


@dataclass(frozen=True)
class ClickSession:
    """One object being clicked in one task: the image, the label, and the clicks so far (percent of the image)."""

    task_id: int | None
    project_id: int | None
    image_url: str
    label: str
    brush: BrushTag
    to_name: str
    width: int | None
    height: int | None
    rotation: float
    percent_clicks: tuple[tuple[float, float, bool], ...]

    def clicks(self, width: int, height: int) -> list[Click]:
        """Clicks in pixels of an image of this size (percent -> pixels, clamped onto the last pixel)."""
        out = []
        for x, y, positive in self.percent_clicks:
            px = min(x / 100.0 * width, width - 1e-3)
            py = min(y / 100.0 * height, height - 1e-3)
            out.append(Click(px, py, positive))
        return out


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BadRequest(f"missing field {where}{key}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRequest(f"field {where}{key} must be {names}, got {type(value).__name__}")
    return value


def parse_predict(payload: Any) -> PredictRequest:
    """Validate the top level of a ``/predict`` body."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    tasks = _require(payload, "tasks", list, "")
    if not all(isinstance(t, dict) for t in tasks):
        raise BadRequest("every item of tasks must be an object")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("field params must be an object")
    context = params.get("context")
    if context is not None and not isinstance(context, dict):
        raise BadRequest("field params.context must be an object or null")
    label_config = payload.get("label_config")
    if label_config is not None and not isinstance(label_config, str):
        raise BadRequest("field label_config must be a string")
    project = payload.get("project")
    if isinstance(project, int) and not isinstance(project, bool) and id_or_none(project) is None:
        project = None  # not an id (str() of an int of 4,300+ digits would even raise)
    return PredictRequest(tasks, str(project) if project is not None else None, label_config, context)


def project_id(project: str | None) -> int | None:
    """``"12.1700000000"`` (id.created_at) -> 12; None when the part before the dot is not an id
    (:func:`backend.ls.ids.parse_id`)."""
    if not project:
        return None
    return id_or_none(project.split(".", 1)[0])


MAX_LABEL_CHARS = 1000


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{where} must be a finite number")
    try:
        number = float(value)  # an int of 400 digits overflows here
    except OverflowError:
        raise BadRequest(f"{where} must be a finite number") from None
    if not math.isfinite(number):
        raise BadRequest(f"{where} must be a finite number")
    return number


@dataclass(frozen=True)
class ImageRef:
    """Where a task's image is: what :meth:`backend.images.loader.ImageLoader.load` takes."""

    url: str
    task_id: int | None
    project_id: int | None


def _task_id(task: dict[str, Any]) -> int | None:
    """The task's id, or None when it has none or not a valid one (it only keys caches and presigns cloud URIs)."""
    return id_or_none(task.get("id"))


def opened_image(request: PredictRequest, task: dict[str, Any]) -> ImageRef | None:
    """The image of a task that was just opened (a request without clicks), or None when it cannot be told.

    Never raises: the request is answered the same whether or not its image can be named.
    """
    try:
        config = parse_label_config(request.label_config or "")
        data = task.get("data")
        url = data.get(config.image_key(None)) if isinstance(data, dict) else None
    except ServiceError:
        return None
    if not isinstance(url, str) or not url.strip():
        return None
    return ImageRef(url, _task_id(task), project_id(request.project))


def click_session(request: PredictRequest, task: dict[str, Any], max_clicks: int) -> ClickSession | None:
    """The click session of one task (its image, label and clicks), or None when the context holds no smart
    keypoints."""
    context = request.context or {}
    items = context.get("result")
    if items is None:
        return None
    if not isinstance(items, list):
        raise BadRequest("params.context.result must be a list")
    if any(not isinstance(r, dict) for r in items):
        raise BadRequest("every item of params.context.result must be an object")
    points = [r for r in items if r.get("type") == "keypointlabels"]
    if not points:
        kinds = sorted({str(r.get("type")) for r in items})
        raise Unprocessable("the context holds no smart keypoints (type keypointlabels)"
                            + (f"; got {', '.join(kinds)}" if kinds else "")
                            + ": click with a smart KeyPointLabels tool (Alt+click for a negative point)")
    if len(points) > max_clicks:
        raise TooLarge(f"{len(points)} clicks in one request; at most {max_clicks} are served (MAX_CLICKS)")
    # One label per request: the label of the newest click; clicks of other labels are another object.
    labels = []
    for i, r in enumerate(points):
        value = _require(r, "value", dict, f"context.result[{i}].")
        names = value.get("keypointlabels") or value.get("labels")
        if not isinstance(names, list) or not names or not isinstance(names[0], str):
            raise BadRequest(f"context.result[{i}].value.keypointlabels must be a non-empty list of strings")
        if len(names[0]) > MAX_LABEL_CHARS:
            raise BadRequest(f"context.result[{i}] has a label of {len(names[0]):,} characters; at most "
                             f"{MAX_LABEL_CHARS} are accepted")
        labels.append(names[0])
    label = labels[-1]
    chosen = [r for r, lab in zip(points, labels, strict=True) if lab == label]
    to_name = chosen[-1].get("to_name") if isinstance(chosen[-1].get("to_name"), str) else None
    if request.label_config is None:
        raise BadRequest("missing field label_config")
    config: LabelConfig = parse_label_config(request.label_config)
    brush = config.brush_for(label, to_name)
    data = task.get("data")
    if not isinstance(data, dict):
        raise BadRequest("task.data must be an object")
    key = config.image_key(to_name)
    url = data.get(key)
    if not isinstance(url, str) or not url:
        raise Unprocessable(f"task.data.{key} (the image of <Image name={to_name!r}>) is missing")
    clicks = []
    width = height = None
    rotation = 0.0
    for i, r in enumerate(chosen):
        v = r["value"]
        x = _number(v.get("x"), f"context.result[{i}].value.x")
        y = _number(v.get("y"), f"context.result[{i}].value.y")
        if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
            raise Unprocessable(f"click {i} at ({x:g}%, {y:g}%) lies outside the image (0-100%)")
        positive = r.get("is_positive", True)
        if not isinstance(positive, bool):
            raise BadRequest(f"context.result[{i}].is_positive must be true or false")
        clicks.append((x, y, positive))
        if "original_width" in r:
            width = int(_number(r["original_width"], f"context.result[{i}].original_width"))
            height = int(_number(r.get("original_height"), f"context.result[{i}].original_height"))
            if width <= 0 or height <= 0:
                raise Unprocessable("original_width and original_height must be positive")
        if "image_rotation" in r:
            rotation = _number(r["image_rotation"], f"context.result[{i}].image_rotation")
    return ClickSession(_task_id(task), project_id(request.project), url, label,
                    brush, to_name or (brush.to_names[0] if brush.to_names else "image"), width, height,
                    rotation, tuple(clicks))
