"""Tests for backend.learning.store: webhook payloads in, the right masks stored durably.

Payloads are built as Label Studio sends them (builders from support.py) and go through
:func:`backend.learning.webhooks.parse_event`, as the ``/webhook`` handler does. Crashes are simulated in process
(an exception while writing files or committing) and for real (a forked child that ``os._exit``-s midway).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import (
    ANNOTATION_ID,
    IMAGE_URL,
    PROJECT_ID,
    TASK_ID,
    annotation_body,
    brush_result,
    delete_body,
    disc,
    keypoint_result,
)

import backend.learning.store as ts
from backend.common.errors import BadRequest
from backend.learning.store import SampleRow, StoreError, TrainingStore, split_for_task
from backend.learning.webhooks import AnnotationEvent, DeleteEvent, parse_event

H, W = 40, 56
MASK_A, MASK_B, MASK_C = disc(H, W, 15, 20, 9), disc(H, W, 28, 40, 7), disc(H, W, 20, 10, 5)


def event(results: list, action: str = "ANNOTATION_CREATED", **kwargs) -> AnnotationEvent:
    parsed = parse_event(annotation_body(results, action, **kwargs))
    assert isinstance(parsed, AnnotationEvent)
    return parsed


def first_version() -> AnnotationEvent:
    return event([brush_result(MASK_A, "Horse", "a"), keypoint_result(), brush_result(MASK_B, "Object", "b")])


def mask_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "samples").rglob("*") if p.is_file()}


def snapshot(store: TrainingStore) -> list[tuple]:
    return [tuple(vars(row).values()) for row in store.samples()]


def assert_first_version(store: TrainingStore) -> None:
    rows = store.samples()
    assert [(r.region_id, r.label) for r in rows] == [("a", "Horse"), ("b", "Object")]
    for row, mask in zip(rows, (MASK_A, MASK_B), strict=True):
        np.testing.assert_array_equal(store.load_mask(row), mask)


@pytest.fixture
def store(tmp_path: Path):
    with TrainingStore(tmp_path) as s:
        yield s


def test_created_annotation_stores_the_right_masks(store: TrainingStore, tmp_path: Path) -> None:
    assert store.replace_annotation(first_version()) == 2
    assert store.count() == 2
    rows = store.samples()
    split = split_for_task(TASK_ID)
    for row, mask in zip(rows, (MASK_A, MASK_B), strict=True):
        assert (row.project_id, row.task_id, row.annotation_id, row.image_url) == (
            PROJECT_ID, TASK_ID, ANNOTATION_ID, IMAGE_URL)
        assert (row.height, row.width, row.area, row.split) == (H, W, int(mask.sum()), split)
        with Image.open(tmp_path / row.mask_path) as png:  # a plain 8-bit PNG, 0/255
            assert png.format == "PNG" and png.mode == "L" and png.size == (W, H)
            pixels = np.asarray(png)
        assert set(np.unique(pixels)) == {0, 255}
        np.testing.assert_array_equal(pixels == 255, mask)
        np.testing.assert_array_equal(store.load_mask(row), mask)
    assert mask_files(tmp_path) == {r.mask_path for r in rows}
    assert (tmp_path / "samples.sqlite3").exists()
    assert store.counts() == ({"train": 2, "val": 0} if split == "train" else {"train": 0, "val": 2})


def test_update_replaces_the_annotations_samples(store: TrainingStore, tmp_path: Path) -> None:
    store.replace_annotation(first_version())
    before = {r.region_id: r for r in store.samples()}
    moved_a = np.roll(MASK_A, 3, axis=1)
    update = event([brush_result(moved_a, "Horse", "a"), brush_result(MASK_C, "Horse", "c")], "ANNOTATION_UPDATED")
    assert store.replace_annotation(update) == 2
    after = {r.region_id: r for r in store.samples()}
    assert sorted(after) == ["a", "c"]
    assert after["a"].id == before["a"].id and after["a"].created_at == before["a"].created_at  # updated in place
    assert after["a"].mask_path != before["a"].mask_path and after["a"].updated_at >= before["a"].updated_at
    np.testing.assert_array_equal(store.load_mask(after["a"]), moved_a)
    np.testing.assert_array_equal(store.load_mask(after["c"]), MASK_C)
    assert mask_files(tmp_path) == {after["a"].mask_path, after["c"].mask_path}  # old files removed
    with pytest.raises(StoreError, match="replaced or deleted"):
        store.load_mask(before["b"])


def test_label_or_image_change_alone_is_an_update(store: TrainingStore) -> None:
    store.replace_annotation(event([brush_result(MASK_A, "Horse", "a")]))
    store.replace_annotation(event([brush_result(MASK_A, "Object", "a")], "ANNOTATION_UPDATED"))
    assert [r.label for r in store.samples()] == ["Object"]


def test_duplicate_delivery_is_idempotent(store: TrainingStore, tmp_path: Path) -> None:
    store.replace_annotation(first_version())
    rows, files = snapshot(store), mask_files(tmp_path)
    for _ in range(2):
        assert store.replace_annotation(first_version()) == 2
    assert snapshot(store) == rows and mask_files(tmp_path) == files


def test_delete_removes_rows_and_files(store: TrainingStore, tmp_path: Path) -> None:
    store.replace_annotation(first_version())
    store.replace_annotation(event([brush_result(MASK_C, "Horse", "x")], annotation_id=12, task_id=8))
    deleted = parse_event(delete_body(ANNOTATION_ID, 999))
    assert isinstance(deleted, DeleteEvent)
    assert store.delete_annotations(deleted.annotation_ids) == 2
    assert [(r.annotation_id, r.region_id) for r in store.samples()] == [(12, "x")]
    assert mask_files(tmp_path) == {store.samples()[0].mask_path}
    assert store.delete_annotations([]) == 0 and store.delete_annotations([ANNOTATION_ID]) == 0


def test_cancelled_or_brushless_update_removes_the_samples(store: TrainingStore, tmp_path: Path) -> None:
    store.replace_annotation(first_version())
    assert store.replace_annotation(event([], "ANNOTATION_UPDATED", was_cancelled=True)) == 0
    assert store.count() == 0 and mask_files(tmp_path) == set()
    store.replace_annotation(first_version())
    assert store.replace_annotation(event([keypoint_result()], "ANNOTATION_UPDATED")) == 0
    assert store.count() == 0


def test_malformed_payload_stores_nothing(store: TrainingStore, tmp_path: Path) -> None:
    body = annotation_body([brush_result(MASK_A)])
    body["task"]["data"] = "not an object"
    with pytest.raises(BadRequest):
        store.replace_annotation(parse_event(body))  # type: ignore[arg-type]
    assert store.count() == 0 and mask_files(tmp_path) == set()


def test_corrupt_region_is_skipped_and_the_rest_stored(store: TrainingStore) -> None:
    bad = brush_result(MASK_B, region_id="bad")
    bad["value"]["rle"] = bad["value"]["rle"][:10]
    parsed = event([bad, brush_result(MASK_A, region_id="good")])
    assert store.replace_annotation(parsed) == 1 and "corrupt brush RLE" in parsed.skipped[0]
    assert [r.region_id for r in store.samples()] == ["good"]


def test_invalid_samples_are_refused(store: TrainingStore) -> None:
    good = first_version()
    sample = good.samples[0]
    for mask in (sample.mask.astype(np.uint8), np.zeros((4, 4), bool), np.ones((2, 2, 2), bool)):
        bad = AnnotationEvent(good.action, good.project_id, good.task_id, good.annotation_id,
                              (type(sample)(**{**vars(sample), "mask": mask}),))
        with pytest.raises(ValueError):
            store.replace_annotation(bad)
    twice = AnnotationEvent(good.action, good.project_id, good.task_id, good.annotation_id, (sample, sample))
    with pytest.raises(ValueError, match="twice"):
        store.replace_annotation(twice)
    assert store.count() == 0


def test_split_is_per_task_deterministic_and_about_a_fifth() -> None:
    splits = [split_for_task(t) for t in range(2000)]
    assert splits == [split_for_task(t) for t in range(2000)]
    assert 0.17 < splits.count("val") / len(splits) < 0.23
    assert {split_for_task(t, 0.0) for t in range(50)} == {"train"}
    assert {split_for_task(t, 1.0) for t in range(50)} == {"val"}


def test_split_filter(tmp_path: Path) -> None:
    val_task = next(t for t in range(100) if split_for_task(t) == "val")
    train_task = next(t for t in range(100) if split_for_task(t) == "train")
    with TrainingStore(tmp_path) as store:
        store.replace_annotation(event([brush_result(MASK_A, region_id="a"), brush_result(MASK_B, region_id="b")],
                                       annotation_id=1, task_id=val_task))
        store.replace_annotation(event([brush_result(MASK_C)], annotation_id=2, task_id=train_task))
        assert [r.task_id for r in store.samples("val")] == [val_task, val_task]
        assert [r.task_id for r in store.samples("train")] == [train_task]
        assert store.counts() == {"train": 1, "val": 2} and store.count("val") == 2
        assert store.count(project_id=PROJECT_ID) == 3 and store.count(project_id=PROJECT_ID + 1) == 0
        with pytest.raises(ValueError):
            store.samples("test")


def test_reopening_finds_everything_and_readonly_readers_work(tmp_path: Path) -> None:
    with TrainingStore(tmp_path) as store:
        store.replace_annotation(first_version())
        rows = snapshot(store)
        with TrainingStore(tmp_path, readonly=True) as reader:  # e.g. the training process, while open
            assert snapshot(reader) == rows
            with pytest.raises(StoreError, match="read-only"):
                reader.delete_annotations([ANNOTATION_ID])
    with TrainingStore(tmp_path) as store:
        assert snapshot(store) == rows
        assert_first_version(store)
    with pytest.raises(FileNotFoundError):
        TrainingStore(tmp_path / "nowhere", readonly=True)


def test_threads_share_one_store(store: TrainingStore) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for k in range(4):
                aid = 100 + 10 * worker + k
                store.replace_annotation(event([brush_result(np.roll(MASK_A, worker + k, 0), region_id="a")],
                                               annotation_id=aid, task_id=aid))
                assert store.count() >= 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and store.count() == 16


# -- crashes -----------------------------------------------------------------------------------------------------------


def test_failure_while_writing_files_keeps_the_previous_samples(store: TrainingStore, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store.replace_annotation(first_version())
    rows, files = snapshot(store), mask_files(tmp_path)
    real_replace, calls = os.replace, []

    def failing_replace(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(ts.os, "replace", failing_replace)
    update = event([brush_result(MASK_C, "Horse", "a"), brush_result(MASK_A, "Object", "b")], "ANNOTATION_UPDATED")
    with pytest.raises(OSError, match="No space"):
        store.replace_annotation(update)
    assert len(calls) == 2
    assert snapshot(store) == rows and mask_files(tmp_path) == files  # first new file removed, temp file too
    assert_first_version(store)


def test_failed_commit_keeps_the_previous_samples(store: TrainingStore, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store.replace_annotation(first_version())
    rows, files = snapshot(store), mask_files(tmp_path)

    def failing_commit(self, conn) -> None:
        raise RuntimeError("disk I/O error during commit")

    monkeypatch.setattr(TrainingStore, "_commit", failing_commit)
    with pytest.raises(RuntimeError):
        store.replace_annotation(event([brush_result(MASK_C, "Horse", "a")], "ANNOTATION_UPDATED"))
    with pytest.raises(RuntimeError):
        store.delete_annotations([ANNOTATION_ID])
    monkeypatch.undo()
    assert snapshot(store) == rows and mask_files(tmp_path) == files
    assert_first_version(store)
    assert store.replace_annotation(event([brush_result(MASK_C, "Horse", "a")], "ANNOTATION_UPDATED")) == 1


def test_exception_after_a_successful_commit_keeps_the_new_files(store: TrainingStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_commit = TrainingStore._commit

    def commit_then_fail(self, conn) -> None:
        real_commit(self, conn)
        raise KeyboardInterrupt  # arrives just after COMMIT returned

    monkeypatch.setattr(TrainingStore, "_commit", commit_then_fail)
    with pytest.raises(KeyboardInterrupt):
        store.replace_annotation(first_version())
    monkeypatch.undo()
    assert_first_version(store)  # committed rows still point at existing files


def _killed_update(root: Path, point: str) -> None:
    """In a forked child: start an update of the annotation and die (``os._exit``) at ``point``."""
    store = TrainingStore(root)
    if point == "commit":  # after writing the new files, before COMMIT
        TrainingStore._commit = lambda self, conn: os._exit(9)  # type: ignore[method-assign]
    elif point == "cleanup":  # after COMMIT, before deleting the superseded files
        TrainingStore._remove_files = lambda self, paths: os._exit(9)  # type: ignore[method-assign]
    elif point == "replace":  # with a temp file on disk
        ts.os.replace = lambda src, dst: os._exit(9)  # type: ignore[assignment]
    update = event([brush_result(np.roll(MASK_A, 5, 1), "Horse", "a"), brush_result(MASK_C, "Horse", "c")],
                   "ANNOTATION_UPDATED")
    store.replace_annotation(update)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("point", ["replace", "commit", "cleanup"])
def test_killed_writer_loses_nothing(tmp_path: Path, point: str) -> None:
    with TrainingStore(tmp_path) as store:
        store.replace_annotation(first_version())
        rows, files = snapshot(store), mask_files(tmp_path)
    pid = os.fork()  # a real second process, killed midway: no exception handler or finally block runs
    if pid == 0:
        try:
            _killed_update(tmp_path, point)
        finally:
            os._exit(3)  # never return into pytest; reaching this means the kill point was not hit
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    leftovers = mask_files(tmp_path) - files
    assert leftovers  # the child left a temp file or unreferenced masks behind

    with TrainingStore(tmp_path) as store:  # default: recent orphans are left alone (a writer may be in flight)
        current = store.samples()
        for row in current:
            assert (tmp_path / row.mask_path).is_file()
            store.load_mask(row)
        if point == "cleanup":  # committed: the update is there, the old files are orphans
            assert [r.region_id for r in current] == ["a", "c"]
            assert current[0].id == rows[0][0]
        else:  # not committed: the previous samples, unchanged
            assert snapshot(store) == rows
            assert_first_version(store)
        assert mask_files(tmp_path) >= {r.mask_path for r in current}
    with TrainingStore(tmp_path, orphan_min_age_s=0) as store:  # orphans are removed on open
        assert mask_files(tmp_path) == {r.mask_path for r in store.samples()}
        assert not any(name.endswith(".tmp") for name in mask_files(tmp_path))


def test_sample_row_fields_match_the_table(store: TrainingStore) -> None:
    store.replace_annotation(first_version())
    row = store.samples()[0]
    assert isinstance(row, SampleRow)
    assert list(vars(row)) == list(ts._COLUMNS)
    assert store.annotation_samples(ANNOTATION_ID) == store.samples()


def test_switching_to_wal_is_retried_while_another_process_holds_the_new_store() -> None:
    # Replicas starting together on one fresh volume: two connections upgrading their locks at once get "database
    # is locked" at once (SQLite skips the busy handler to avoid a deadlock); about one start in 40 failed so.
    class Conn:
        def __init__(self, errors: list[str]) -> None:
            self.errors, self.calls = errors, 0

        def execute(self, sql: str) -> None:
            assert sql == "PRAGMA journal_mode=WAL"
            self.calls += 1
            if self.errors:
                raise sqlite3.OperationalError(self.errors.pop(0))

    conn = Conn(["database is locked", "database is locked"])
    TrainingStore._enable_wal(conn)  # type: ignore[arg-type]
    assert conn.calls == 3
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):  # anything else is not retried
        TrainingStore._enable_wal(Conn(["disk I/O error"]))  # type: ignore[arg-type]
