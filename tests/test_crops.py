"""Crops made by the real pipeline (real dlib, real sample faces)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLE, link_images, manifest_rows, run_regions, sample_files

from agefuse.regions import crop, landmarks

# each part crop must hold the landmarks it is named after
PART_POINTS = {"left_eye": "left_eye", "right_eye": "right_eye", "mouth": "outer_lip"}


def assert_crops_hold_their_landmarks(cache, rows):
    for row in rows:
        points = np.array(row["landmarks"])
        for region, names in PART_POINTS.items():
            matrix = np.array(row["matrices"][region])
            height, width = cv2.imread(str(cache / row["crops"][region])).shape[:2]
            inside = crop.transform(matrix, landmarks.points(points, names))
            assert (inside >= 0).all() and (inside[:, 0] < width).all() and (inside[:, 1] < height).all(), \
                f"{row['id']}: {names} points fall outside the {region} crop: {inside.round(1)}"
        # and the face crop holds every landmark but the jaw's ends
        face = crop.transform(np.array(row["matrices"]["face"]), points[17:])
        assert face.min() >= 0 and face.max() < 160, row["id"]


def assert_aligned_faces_are_level(cache, rows):
    """dlib run again on the aligned crop from disk: its eyes must be level (< 2 degrees)."""
    angles = []
    for row in rows:
        face = cv2.imread(str(cache / row["crops"]["face"]))
        gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
        found = landmarks.face_locations(gray, "hog", upsample=1)
        if not found:
            continue
        angles.append(abs(crop.eye_angle(landmarks.face_landmarks(gray, found[0][0]))))
    assert len(angles) >= 0.8 * len(rows), "dlib should find most aligned faces again"
    assert max(angles) < 2.0, f"aligned faces not level: {sorted(angles)[-3:]} degrees"
    return angles


def test_region_crops_hold_their_landmarks(hog_cache):
    rows = [r for r in manifest_rows(hog_cache) if r["status"] == "ok"]
    assert len(rows) >= 30
    assert_crops_hold_their_landmarks(hog_cache, rows)


def test_aligned_face_has_level_eyes(hog_cache):
    rows = [r for r in manifest_rows(hog_cache) if r["status"] == "ok"]
    source_angles = [abs(crop.eye_angle(np.array(r["landmarks"]))) for r in rows]
    assert max(source_angles) > 2.0, "the sample should hold tilted faces for this to mean much"
    assert_aligned_faces_are_level(hog_cache, rows)


def test_crops_have_the_configured_sizes_and_folders(hog_cache):
    for row in manifest_rows(hog_cache)[:10]:
        for region, rel in row["crops"].items():
            assert rel.startswith(f"{row['age_group']}/{region}/{row['id']}.")
            image = cv2.imread(str(hog_cache / rel))
            assert image.shape[1::-1] == crop.DEFAULT_SIZES[region]
        assert Path(row["source"]).is_file(), "the source file stays readable through the manifest"


def test_original_frames_the_detected_box_as_a_chip_does(hog_cache):
    """``original`` is the box centred in a square it fills 0.9 of: a 200-px UTKFace chip
    comes back nearly as it is, unrotated."""
    for row in [r for r in manifest_rows(hog_cache) if r["status"] == "ok"][:10]:
        matrix = np.array(row["matrices"]["original"])
        left, top, right, bottom = row["box"]
        corners = crop.transform(matrix, np.array([[left, top], [right, bottom]], float))
        side = crop.DEFAULT_SIZES["original"][0]
        assert matrix[0, 1] == matrix[1, 0] == 0, "no rotation"
        assert max(corners[1] - corners[0]) == pytest.approx(0.9 * side, abs=0.5)
        assert (corners[0] + corners[1]) / 2 == pytest.approx([side / 2, side / 2], abs=0.5)


def test_asking_for_some_crops_cuts_the_same_pixels_and_skips_landmarks_it_does_not_need():
    """What ``agefuse-predict`` does for a model that reads only some crops."""
    from agefuse.regions.pipeline import Settings, detect
    image = cv2.imread(str(sample_files(1, offset=7)[0]))
    (every,), _ = detect(image, Settings())
    (boxed,), _ = detect(image, Settings(), crops=("original",))
    (mouth,), _ = detect(image, Settings(), crops=("mouth",))
    assert boxed["landmarks"] is None and list(boxed["crops"]) == ["original"]
    assert np.array_equal(boxed["crops"]["original"], every["crops"]["original"])
    assert np.array_equal(mouth["landmarks"], every["landmarks"]) and list(mouth["crops"]) == ["mouth"]
    assert np.array_equal(mouth["crops"]["mouth"], every["crops"]["mouth"])


def test_sizes_are_configurable(tmp_path):
    source = link_images(tmp_path / "images", sample_files(3))
    run_regions(source, "--cache", tmp_path / "cache", "--workers", 1,
                "--face-size", 96, "--mouth-size", "72x48", "--ext", "png")
    row = manifest_rows(tmp_path / "cache")[0]
    assert cv2.imread(str(tmp_path / "cache" / row["crops"]["face"])).shape[:2] == (96, 96)
    assert cv2.imread(str(tmp_path / "cache" / row["crops"]["mouth"])).shape[:2] == (48, 72)
    assert row["crops"]["mouth"].endswith(".png")


def test_whole_image_fallback_is_flagged(tmp_path):
    """A real sample face that HOG misses (a profile): the fallback crops it anyway, and
    says so, unless the user asks for rejection."""
    missed = SAMPLE / "26_1_1_20170113011613638.jpg.chip.jpg"
    source = link_images(tmp_path / "images", [missed])
    run_regions(source, "--cache", tmp_path / "a", "--workers", 1)
    row, = manifest_rows(tmp_path / "a")
    assert (row["status"], row["detector"], row["faces"]) == ("fallback", "whole-image", 0)
    assert cv2.imread(str(tmp_path / "a" / row["crops"]["face"])).shape == (160, 160, 3)
    run_regions(source, "--cache", tmp_path / "b", "--workers", 1, "--no-fallback")
    row, = manifest_rows(tmp_path / "b")
    assert row["status"] == "rejected" and "no face found" in row["reason"]


@pytest.fixture(scope="module")
def cnn_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    source = link_images(root / "images", sample_files(5, offset=3))
    run_regions(source, "--cache", root / "cache", "--workers", 1, "--detector", "cnn")
    return root / "cache"


def test_cnn_detector_crops_hold_landmarks_and_align(cnn_cache):
    rows = manifest_rows(cnn_cache)
    assert len(rows) == 5
    detected = [r for r in rows if r["status"] == "ok"]
    assert len(detected) >= 4 and all(r["detector"] == "cnn" for r in detected)
    assert_crops_hold_their_landmarks(cnn_cache, detected)
    assert_aligned_faces_are_level(cnn_cache, detected)


def test_face_chip_is_framed_as_dlibs_own_chips(hog_cache):
    """face_chip is there to show dlib's face ResNet what it was trained on: it must look like
    dlib.get_face_chip(size 150, padding 0.25) of the same face, much more than the face crop."""
    import dlib

    def ncc(a, b):
        a, b = a.astype(float).ravel(), b.astype(float).ravel()
        a, b = a - a.mean(), b - b.mean()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    chip_scores, face_scores = [], []
    for row in [r for r in manifest_rows(hog_cache) if r["status"] == "ok"][:20]:
        shape = dlib.full_object_detection(dlib.rectangle(*map(int, row["box"])),
                                           [dlib.point(int(x), int(y)) for x, y in row["landmarks"]])
        dlib_chip = cv2.cvtColor(dlib.get_face_chip(dlib.load_rgb_image(row["source"]), shape, size=150,
                                                    padding=0.25), cv2.COLOR_RGB2GRAY)
        ours = cv2.imread(str(hog_cache / row["crops"]["face_chip"]), cv2.IMREAD_GRAYSCALE)
        face = cv2.resize(cv2.imread(str(hog_cache / row["crops"]["face"]), cv2.IMREAD_GRAYSCALE), (150, 150),
                          interpolation=cv2.INTER_AREA)
        chip_scores.append(ncc(dlib_chip, ours))
        face_scores.append(ncc(dlib_chip, face))
    # on 30 UTKFace faces: medians 0.80 (face_chip) and 0.51 (face)
    assert np.median(chip_scores) > 0.7 and np.median(chip_scores) > np.median(face_scores) + 0.15, \
        (np.median(chip_scores), np.median(face_scores))
