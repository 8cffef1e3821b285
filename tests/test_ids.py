"""Label Studio ids: one parser for ``/predict`` and ``/webhook``, ints and ASCII digit strings only, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from support import body, keypoint

from backend.common.errors import BadRequest
from backend.learning.webhooks import parse_event
from backend.ls.ids import MAX_ID, MAX_ID_DIGITS, IdError, id_or_none, parse_id
from backend.serve.parse import click_session, opened_image, parse_predict, project_id


def short(value: Any) -> str:
    """A test id (pytest's own str() of an int of 5,000 digits would raise)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"int-of-{value.bit_length()}-bits"
    if isinstance(value, str) and len(value) > 20:
        return f"str-of-{len(value)}-characters"
    return ascii(value)


@pytest.mark.parametrize("value, expected", [
    (0, 0), (7, 7), (MAX_ID, MAX_ID), ("7", 7), ("007", 7), ("9" * MAX_ID_DIGITS, int("9" * MAX_ID_DIGITS)),
], ids=short)
def test_ints_and_ascii_digit_strings_are_ids(value: Any, expected: int) -> None:
    assert parse_id(value) == expected and id_or_none(value) == expected


@pytest.mark.parametrize("value", [
    "٣",  # ARABIC-INDIC DIGIT THREE: str.isdigit() and int() accept it
    "²",  # SUPERSCRIPT TWO: str.isdigit() accepts it, int() does not
    "1٣",
    "9" * 5000,  # int() refuses more than 4,300 digits with a ValueError
    "9" * (MAX_ID_DIGITS + 1),
    -1, "-1", "+1", " 1", "1 ", "1_000", "1e3", "0x10",
    True, False,
    1.0, 3.5, float("nan"),
    "", None, [1], {"id": 1},
    MAX_ID + 1, 10**5000,
], ids=short)
def test_everything_else_is_refused_with_a_clear_message(value: Any) -> None:
    with pytest.raises(IdError) as info:
        parse_id(value)
    message = str(info.value)
    assert message.startswith("must be a non-negative integer id") and len(message) < 200
    assert id_or_none(value) is None


@pytest.mark.parametrize("value", ["٣", "9" * 5000, -1, True, 3.0, ""], ids=short)
def test_a_webhook_with_a_bad_id_is_a_400(value: Any) -> None:
    with pytest.raises(BadRequest) as info:
        parse_event({"action": "START_TRAINING", "project": {"id": value}})
    assert info.value.status == 400 and "'project.id' must be a non-negative integer id" in info.value.message
    with pytest.raises(BadRequest):
        parse_event({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": value}]})


def test_the_webhook_and_predict_parsers_read_ids_the_same_way() -> None:
    assert parse_event({"action": "START_TRAINING", "project": {"id": "12"}}).project_id == 12
    assert project_id("12.1700000000") == 12
    request = parse_predict({**body([]), "tasks": [{"id": "12", "data": {"image": "/data/upload/1/x.png"}}]})
    assert opened_image(request, request.tasks[0]).task_id == 12


@pytest.mark.parametrize("project, task_id", [("٣.1700000000", "٣"), ("9" * 5000, "9" * 5000), (10**5000, 10**5000),
                                              ("-3.1", -3), ("x3.1", True)], ids=short)
def test_predict_serves_tasks_whose_ids_are_not_ids_without_them(project: Any, task_id: Any) -> None:
    # The ids of /predict only key caches and presign cloud URIs: a bad one is left out, never a 500.
    payload = {**body([keypoint(80, 60)]), "project": project, "tasks": [{"id": task_id, "data": {"image": "/x.png"}}]}
    request = parse_predict(payload)
    session = click_session(request, request.tasks[0], max_clicks=10)
    assert (session.task_id, session.project_id) == (None, None)
    ref = opened_image(request, request.tasks[0])
    assert (ref.task_id, ref.project_id) == (None, None)
