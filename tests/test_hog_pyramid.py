"""The HOG detector on two threads (agefuse.regions.hog_pyramid) against dlib's own, on real photos."""
import cv2
import numpy as np
import pytest
from conftest import sample_files

from agefuse.regions import landmarks
from agefuse.regions.hog_pyramid import box_of, split_detector


def photos():
    """Sample faces as they come (200 px), centred in a 320 px photo, four in a 480 px grid,
    the grid enlarged to 960 px, and one shrunk below the detector's window."""
    faces = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY) for p in sample_files(24)]
    for i in range(0, len(faces), 4):
        four = faces[i:i + 4]
        yield four[0]
        single = np.full((320, 320), 235, np.uint8)
        single[60:260, 60:260] = four[1]
        yield single
        grid = np.full((480, 480), 235, np.uint8)
        for k, face in enumerate(four):
            grid[20 + (k // 2) * 220:220 + (k // 2) * 220, 20 + (k % 2) * 220:220 + (k % 2) * 220] = face
        yield grid
        yield cv2.resize(grid, (960, 960))
        yield cv2.resize(four[2], (70, 70))
        # about 110 px: the far half's photo is smaller than the window, and dlib still finds
        # faces over the edge there
        yield cv2.resize(four[3], (110, 110))
        yield cv2.resize(four[0], (104, 116))


def test_the_split_pyramid_finds_what_dlib_finds():
    split = split_detector()
    assert split is not None, "dlib's frontal detector file did not read as expected"
    compared = faces = 0
    for image in photos():
        rects, scores, _ = landmarks._hog_detector().run(image, 0)
        expected = sorted(zip(scores, [box_of(r) for r in rects]))
        found = sorted((score, box) for box, score in split.run(image))
        assert len(found) == len(expected)
        for (score, box), (want_score, want_box) in zip(found, expected):
            assert score == pytest.approx(want_score, abs=1e-9)
            # the far levels' boxes are scaled up from the shrunk photo: rounding, a pixel at most
            assert np.abs(np.subtract(box, want_box)).max() <= 1
        compared += 1
        faces += len(found)
    assert compared == 42 and faces >= 55


def test_face_locations_uses_it_with_two_threads_only():
    image = cv2.cvtColor(cv2.imread(str(sample_files(1)[0])), cv2.COLOR_BGR2GRAY)
    one = landmarks.face_locations(image, threads=1)
    two = landmarks.face_locations(image, threads=2)
    assert len(one) == len(two) == 1
    assert np.abs(np.subtract(one[0][0], two[0][0])).max() <= 1
    assert two[0][1] == pytest.approx(one[0][1])


def test_a_strided_view_is_detected_as_its_copy():
    bgr = cv2.imread(str(sample_files(1)[0]))
    rgb_view = bgr[:, :, ::-1]  # not C-contiguous: dlib alone silently finds nothing in it
    for threads in (1, 2):
        assert len(landmarks.face_locations(rgb_view, threads=threads)) == 1
