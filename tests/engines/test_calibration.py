"""Calibration and validation image sets: folders, demo photos, hashes, feeds, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.build.int8.calibration import CalibrationSet, ImageSet, ImageSetError, image_sets
from engines.sources.sample_images import CALIBRATION_PHOTOS, VALIDATION_PHOTOS
from tests.engines.build_fixtures import write_photos


def test_folder_set_reads_every_image_in_order(tmp_path: Path) -> None:
    images = ImageSet.from_folder(write_photos(tmp_path / "calib", 5))
    assert images.names == tuple(f"img{k:03d}.png" for k in range(5))
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images.images)
    assert len(images.photo_hashes) == 5


def test_content_hash_follows_the_bytes(tmp_path: Path) -> None:
    first = ImageSet.from_folder(write_photos(tmp_path / "a", 3, seed=1))
    same = ImageSet.from_folder(write_photos(tmp_path / "b", 3, seed=1))
    other = ImageSet.from_folder(write_photos(tmp_path / "c", 3, seed=2))
    assert first.content_hash == same.content_hash != other.content_hash


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetError, match="is empty"):
        ImageSet.from_folder(tmp_path / "empty")
    with pytest.raises(ImageSetError, match="does not exist"):
        ImageSet.from_folder(tmp_path / "missing")


def test_non_image_files_are_named_not_skipped(tmp_path: Path) -> None:
    folder = write_photos(tmp_path / "mixed", 2)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(50))
    with pytest.raises(ImageSetError, match=r"not images: broken\.jpg .*notes\.txt"):
        ImageSet.from_folder(folder)


def test_demo_sets_are_disjoint_and_expanded_to_the_count() -> None:
    val, calib = image_sets(12, 40)
    assert calib is not None and len(calib) == 40 and len(val) == 12
    assert not set(CALIBRATION_PHOTOS) & set(VALIDATION_PHOTOS)
    assert calib.shared_photos(val) == frozenset()
    assert len({im.shape for im in calib.images}) > len(CALIBRATION_PHOTOS)  # crops differ
    assert ImageSet.from_samples(CALIBRATION_PHOTOS, 40).content_hash == calib.content_hash


def test_sets_sharing_a_photo_are_refused(tmp_path: Path) -> None:
    write_photos(tmp_path / "val", 3)
    write_photos(tmp_path / "calib", 5)  # same seed: the same first three photos
    with pytest.raises(ImageSetError, match="share 3 photo"):
        image_sets(tmp_path / "val", tmp_path / "calib")


def test_calibration_set_feeds_letterboxed_images_and_rewinds(tmp_path: Path) -> None:
    images = ImageSet.from_folder(write_photos(tmp_path / "calib", 3))
    fed: list[int] = []
    calibration = CalibrationSet(images, "images", (32, 32), 114, tmp_path / "ranges.json")
    calibration.on_feed = fed.append
    feeds = list(calibration)
    assert len(feeds) == len(calibration) == 3 and len(fed) == 3
    assert feeds[0]["images"].shape == (1, 3, 32, 32) and feeds[0]["images"].dtype == np.float32
    assert calibration.content_hash == images.content_hash
    read = [calibration.get_next() for _ in range(4)]
    assert read[3] is None and all(r is not None for r in read[:3])
    calibration.rewind()
    assert calibration.get_next() is not None


@pytest.mark.parametrize("count", [2, 4, 5, 7, 24])
def test_spread_picks_evenly_from_first_to_last(count: int) -> None:
    calib = ImageSet.from_samples(CALIBRATION_PHOTOS, 24)
    picked = [calib.names.index(name) for name in calib.spread(count).names]
    assert len(set(picked)) == count and picked == sorted(picked)
    assert (picked[0], picked[-1]) == (0, 23)  # the whole set is covered
    gaps = np.diff(picked)
    assert gaps.max() - gaps.min() <= 1, picked  # evenly: steps differ by at most one
