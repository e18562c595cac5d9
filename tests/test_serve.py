"""agefuse-serve, through FastAPI's test client: real photos, the installed model."""
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from conftest import SAMPLE

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from agefuse.fusion.serve import create_app  # noqa: E402

PHOTO = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(max_bytes=400_000, max_pixels=4_000_000)) as client:
        yield client


def test_the_page_and_a_sample_photo(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/predict" in page.text
    answer = client.post("/predict", files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    face, = answer.json()["faces"]
    assert face["gender"] == "male" and face["age_interval"][0] <= face["age"] <= face["age_interval"][1]
    raw = client.post("/predict", content=PHOTO.read_bytes(), headers={"content-type": "application/octet-stream"})
    assert raw.json()["faces"] == answer.json()["faces"]


def test_a_corrupt_upload_is_a_4xx_with_one_line(client):
    answer = client.post("/predict", files={"file": ("notes.jpg", b"this is not an image", "image/jpeg")})
    assert 400 <= answer.status_code < 500 and "\n" not in answer.json()["error"]
    truncated = client.post("/predict", files={"file": ("cut.jpg", PHOTO.read_bytes()[:2000], "image/jpeg")})
    assert truncated.status_code in (400, 415) and "truncated" in truncated.json()["error"]


def test_an_oversized_upload_or_image_is_413(client):
    big = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    data = cv2.imencode(".png", big)[1].tobytes()
    assert len(data) > 400_000
    answer = client.post("/predict", files={"file": ("big.png", data, "image/png")})
    assert answer.status_code == 413 and "over the limit" in answer.json()["error"]
    wide = cv2.imencode(".jpg", np.zeros((1000, 4100, 3), np.uint8))[1].tobytes()
    answer = client.post("/predict", files={"file": ("wide.jpg", wide, "image/jpeg")})
    assert answer.status_code == 413 and "4100 x 1000 pixels" in answer.json()["error"]


def test_eight_concurrent_requests_each_get_their_own_photo_s_faces(client):
    """Photos holding 1 to 4 faces, sent at once: each answer holds its own photo's faces."""
    chips = [cv2.imread(str(p)) for p in sorted(SAMPLE.glob("*.jpg"))[120:124]]
    photos = []
    for count in (1, 2, 3, 4, 1, 2, 3, 4):
        canvas = np.full((240, 40 + 220 * count, 3), 230, np.uint8)
        for i in range(count):
            canvas[20:220, 20 + 220 * i:220 + 220 * i] = chips[i]
        photos.append(cv2.imencode(".jpg", canvas)[1].tobytes())
    alone = [client.post("/predict", content=p).json()["faces"] for p in photos]
    assert [len(f) for f in alone] == [1, 2, 3, 4, 1, 2, 3, 4]  # each photo's own faces, found
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: client.post("/predict", content=p).json()["faces"], photos))
    assert [len(f) for f in together] == [len(f) for f in alone] and together == alone
