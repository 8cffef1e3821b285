"""Tests for backend.learning.webhooks: Label Studio webhook bodies -> typed events.

The payload builders (``support.py``) follow what Label Studio 1.23 sends (its ``webhooks/models.py``):
``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` carry the full ``annotation``, ``task`` and ``project`` rows,
``ANNOTATIONS_DELETED`` a list ``annotations: [{"id": ...}]`` plus ``project``, ``START_TRAINING`` only ``project``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import (
    ANNOTATION_ID,
    IMAGE_URL,
    LABEL_CONFIG,
    PROJECT_ID,
    TASK_ID,
    annotation_body,
    brush_result,
    delete_body,
    disc,
    keypoint_result,
)

from backend.common.errors import BadRequest
from backend.learning.webhooks import (
    AnnotationEvent,
    DeleteEvent,
    Ignored,
    TrainEvent,
    parse_event,
)

# -- annotations -------------------------------------------------------------------------------------------------------


def test_created_annotation_yields_one_sample_per_brush_region() -> None:
    horse, person = disc(48, 64, 20, 30, 10), disc(48, 64, 35, 10, 6)
    body = annotation_body([brush_result(horse, "Horse", "a"), keypoint_result(), brush_result(person, "Object", "b")])
    event = parse_event(body)
    assert isinstance(event, AnnotationEvent)
    assert (event.action, event.project_id, event.task_id, event.annotation_id) == (
        "ANNOTATION_CREATED", PROJECT_ID, TASK_ID, ANNOTATION_ID)
    assert [(s.region_id, s.label, s.image_url) for s in event.samples] == [
        ("a", "Horse", IMAGE_URL), ("b", "Object", IMAGE_URL)]
    for sample, expected in zip(event.samples, (horse, person), strict=True):
        assert sample.mask.dtype == np.bool_ and sample.mask.shape == (48, 64)
        np.testing.assert_array_equal(sample.mask, expected)
        assert (sample.project_id, sample.task_id, sample.annotation_id) == (PROJECT_ID, TASK_ID, ANNOTATION_ID)
    assert len(event.skipped) == 1 and "keypointlabels x1" in event.skipped[0] and not event.cancelled


def test_updated_annotation_parses_the_same_way() -> None:
    event = parse_event(annotation_body([brush_result(disc(20, 20, 10, 10, 5))], "ANNOTATION_UPDATED"))
    assert isinstance(event, AnnotationEvent) and event.action == "ANNOTATION_UPDATED" and len(event.samples) == 1


def test_soft_brush_edges_are_foreground_from_alpha_128() -> None:
    alpha = np.zeros((10, 12), np.uint8)
    alpha[2:8, 3:9] = 255
    alpha[2, 3:9] = 127  # anti-aliased edge below the threshold
    alpha[7, 3:9] = 128  # ... and at it
    alpha[4, 0] = 1
    event = parse_event(annotation_body([brush_result(alpha=alpha)]))
    np.testing.assert_array_equal(event.samples[0].mask, alpha >= 128)


def test_image_key_comes_from_the_image_tag_named_by_to_name() -> None:
    config = """<View><Image name="left" value="$img_a"/><Image name="right" value="$img_b"/>
      <BrushLabels name="tag" toName="left,right"><Label value="Object"/></BrushLabels></View>"""
    body = annotation_body([brush_result(disc(16, 16, 8, 8, 4), to_name="right"),
                            brush_result(disc(16, 16, 8, 8, 3), region_id="r2", to_name="left")],
                           label_config=config, data={"img_a": "s3://bucket/a.png", "img_b": "s3://bucket/b.png"})
    event = parse_event(body)
    assert [s.image_url for s in event.samples] == ["s3://bucket/b.png", "s3://bucket/a.png"]


def test_without_label_config_the_image_is_guessed_from_task_data() -> None:
    body = annotation_body([brush_result(disc(16, 16, 8, 8, 4))], label_config=None,
                           data={"caption": "a horse", "photo": "https://example.com/x/horse.JPG?sig=1"})
    assert parse_event(body).samples[0].image_url == "https://example.com/x/horse.JPG?sig=1"
    body = annotation_body([brush_result(disc(16, 16, 8, 8, 4))], label_config=None, data={"caption": "a horse"})
    event = parse_event(body)
    assert not event.samples and "image reference" in event.skipped[0]


def test_missing_image_value_skips_the_region() -> None:
    event = parse_event(annotation_body([brush_result(disc(16, 16, 8, 8, 4))], data={"other": "x"}))
    assert not event.samples and "'image'" in event.skipped[0]


def test_cancelled_annotation_has_no_samples_and_a_reason() -> None:
    body = annotation_body([brush_result(disc(16, 16, 8, 8, 4))], was_cancelled=True)
    body["annotation"]["result"] = []
    event = parse_event(body)
    assert isinstance(event, AnnotationEvent) and event.cancelled and event.samples == ()
    assert "was_cancelled" in event.skipped[0]


def test_results_without_brush_masks_are_ignored_with_a_reason() -> None:
    polygon = {"id": "p", "type": "polygonlabels", "to_name": "image", "from_name": "poly",
               "value": {"points": [[1, 1], [5, 5], [1, 5]], "polygonlabels": ["Object"]}}
    event = parse_event(annotation_body([keypoint_result("k1"), keypoint_result("k2"), polygon]))
    assert event.samples == ()
    assert event.skipped == ["annotation 11: 3 result(s) without a brush mask (keypointlabels x2, polygonlabels x1)"]
    assert "empty result" in parse_event(annotation_body([])).skipped[0]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r["value"].update(rle=r["value"]["rle"][:9]), "corrupt brush RLE"),
        (lambda r: r.update(original_height=r["original_height"] + 1), "corrupt brush RLE"),  # size mismatch
        (lambda r: r["value"].update(rle=[300, 1, 2]), "corrupt brush RLE"),
        (lambda r: r["value"].update(format="png"), "not 'rle'"),
        (lambda r: r["value"].update(brushlabels=[]), "brushlabels"),
        (lambda r: r.update(original_width="wide"), "positive integers"),
        (lambda r: r["value"].pop("rle"), "value.rle"),
        (lambda r: r.update(value="oops"), "not an object"),
    ],
)
def test_bad_region_is_skipped_with_a_reason_and_the_others_kept(mutate, reason: str) -> None:
    bad = brush_result(disc(20, 24, 10, 10, 6), region_id="bad")
    mutate(bad)
    good = brush_result(disc(20, 24, 8, 12, 5), region_id="good")
    event = parse_event(annotation_body([bad, good]))
    assert [s.region_id for s in event.samples] == ["good"]
    assert len(event.skipped) == 1 and "region 'bad'" in event.skipped[0] and reason in event.skipped[0]


def test_empty_mask_is_skipped() -> None:
    alpha = np.zeros((8, 8), np.uint8)
    alpha[2:4, 2:4] = 100  # visible in the editor, but below the foreground threshold
    event = parse_event(annotation_body([brush_result(alpha=alpha)]))
    assert event.samples == () and "empty mask" in event.skipped[0]


def test_oversized_regions_are_not_decoded() -> None:
    body = annotation_body([brush_result(disc(20, 20, 10, 10, 5), region_id="a"),
                            brush_result(disc(20, 20, 10, 10, 4), region_id="b")])
    assert "larger than the limit" in parse_event(body, max_pixels=399).skipped[0]
    event = parse_event(body, max_total_pixels=500)
    assert [s.region_id for s in event.samples] == ["a"] and "decoded pixels" in event.skipped[0]


def test_duplicate_or_missing_region_ids_stay_unique() -> None:
    first, second, third = (brush_result(disc(12, 12, 6, 6, r)) for r in (2, 3, 4))
    del third["id"]
    event = parse_event(annotation_body([first, second, third]))
    assert [s.region_id for s in event.samples] == ["r1", "r1#2", "result-2"]


def test_ids_may_be_digit_strings() -> None:
    body = annotation_body([brush_result(disc(12, 12, 6, 6, 3))])
    body["annotation"]["id"], body["task"]["id"], body["annotation"]["task"] = "11", "7", "7"
    event = parse_event(body)
    assert (event.annotation_id, event.task_id) == (11, 7)


# -- other actions -----------------------------------------------------------------------------------------------------


def test_annotations_deleted_lists_ids() -> None:
    event = parse_event(delete_body(11, 12, 11))
    assert event == DeleteEvent((11, 12), PROJECT_ID)
    assert parse_event({"action": "ANNOTATIONS_DELETED", "annotations": []}) == DeleteEvent(())
    # tolerated: a single object, as the legacy ANNOTATION_DELETED handler of label-studio-ml expects
    assert parse_event({"action": "ANNOTATIONS_DELETED", "annotation": {"id": 5}}).annotation_ids == (5,)


def test_start_training_carries_the_project() -> None:
    assert parse_event({"action": "START_TRAINING", "project": {"id": 3, "label_config": LABEL_CONFIG}}) == (
        TrainEvent(3))


@pytest.mark.parametrize("action", ["PROJECT_UPDATED", "TASKS_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_DELETED",
                                    "LABEL_LINK_CREATED", "SOMETHING_NEW"])
def test_other_actions_are_ignored(action: str) -> None:
    assert parse_event({"action": action, "project": {"id": 3}, "whatever": [1, 2]}) == Ignored(action)


# -- malformed bodies --------------------------------------------------------------------------------------------------


def _without(path: str) -> dict[str, Any]:
    body = annotation_body([brush_result(disc(12, 12, 6, 6, 3))])
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    del target[last]
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = annotation_body([brush_result(disc(12, 12, 6, 6, 3))])
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    target[last] = value
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ("ANNOTATION_CREATED", "JSON object"),
        (None, "JSON object"),
        ({}, "'action' string"),
        ({"action": 5}, "'action' string"),
        ({"action": ""}, "'action' string"),
        (_without("annotation"), "no 'annotation' object"),
        (_without("task"), "no 'task' object"),
        (_with("annotation", [1]), "'annotation' must be an object"),
        (_without("annotation.id"), "'annotation.id' is missing"),
        (_with("annotation.id", "abc"), "'annotation.id' must be a non-negative integer id"),
        (_with("annotation.id", True), "'annotation.id' must be"),
        (_with("task.id", -1), "'task.id' must be"),
        (_with("task.data", "img.png"), "'task.data' must be an object"),
        (_with("annotation.result", {"a": 1}), "'annotation.result' must be a list"),
        (_without("annotation.result"), "'annotation.result' must be a list"),
        (_with("annotation.was_cancelled", "no"), "was_cancelled"),
        (_with("annotation.task", 8), "does not match"),
        (_with("project", "3"), "'project' must be an object"),
        ({"action": "ANNOTATIONS_DELETED"}, "no 'annotations' list"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": {"id": 1}}, "must be a list"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]}, "must be a non-negative integer"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [[1]]}, "integer 'id'"),
        ({"action": "START_TRAINING"}, "no 'project' object"),
        ({"action": "START_TRAINING", "project": {"title": "x"}}, "'project.id' is missing"),
    ],
)
def test_malformed_bodies_are_bad_requests(body: Any, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_event(body)
    assert info.value.status == 400 and message in info.value.message


def test_project_id_falls_back_to_the_annotation_and_task_rows() -> None:
    body = _without("project")
    event = parse_event(body)  # no label config: the image is guessed from task.data
    assert event.project_id == PROJECT_ID and event.samples[0].image_url == IMAGE_URL
    del body["annotation"]["project"], body["task"]["project"]
    with pytest.raises(BadRequest, match="no project id"):
        parse_event(body)
