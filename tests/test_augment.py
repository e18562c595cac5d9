"""Each declared transform, on a real face crop from the sample."""
import cv2
import numpy as np
import pytest
from conftest import SAMPLE

from agefuse.branches import augment

IMAGE = cv2.cvtColor(cv2.resize(cv2.imread(str(sorted(SAMPLE.glob("*.jpg"))[40])), (96, 96)),
                     cv2.COLOR_BGR2RGB)


def declared_steps():
    config = augment.load_config("default")
    return [(region, step) for region, steps in config.items() for step in steps]


@pytest.mark.parametrize("region, step", declared_steps(),
                         ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_every_declared_transform_changes_the_image_and_keeps_shape_and_dtype(region, step):
    (name, kwargs), = step.items()
    transform = augment.build_step({name: {**kwargs, "p": 1.0}})
    transform.set_random_seed(0)
    out = transform(image=IMAGE.copy())["image"]
    assert out.shape == IMAGE.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - IMAGE).mean() > 0.5, f"{name} left the image unchanged"


@pytest.mark.parametrize("space", augment.COLOR_SPACES)
def test_each_color_space_view(space):
    out = augment.ColorSpaceView(spaces=[space], p=1.0)(image=IMAGE.copy())["image"]
    assert out.shape == IMAGE.shape and out.dtype == np.uint8 and not np.array_equal(out, IMAGE)
    if space in ("gray", "red", "green", "blue"):
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("method", sorted(augment.DENOISERS))
def test_each_denoiser_smooths(method):
    noisy = np.clip(IMAGE + np.random.default_rng(0).normal(0, 12, IMAGE.shape), 0, 255).astype(np.uint8)
    out = augment.Denoise(method=method, p=1.0)(image=noisy)["image"]
    assert out.shape == noisy.shape and out.dtype == np.uint8
    # smoother: less high-frequency energy than the noisy input
    assert np.abs(cv2.Laplacian(out, cv2.CV_32F)).mean() < np.abs(cv2.Laplacian(noisy, cv2.CV_32F)).mean()


def test_eyes_pipelines_never_flip():
    for region in ("eyes", "left_eye", "right_eye"):
        assert "HorizontalFlip" not in str(augment.load_config("default")[region])


def test_aug_none_is_the_identity():
    assert np.array_equal(augment.build_pipeline("face", "none")(image=IMAGE)["image"], IMAGE)


def test_unknown_transform_and_missing_region_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation 'Sparkle'"):
        augment.build_step({"Sparkle": {}})
    (tmp_path / "mine.json").write_text('{"face": []}')
    with pytest.raises(ValueError, match="no entry for region 'mouth'"):
        augment.build_pipeline("mouth", str(tmp_path / "mine.json"))
    with pytest.raises(FileNotFoundError, match="augmentation config not found"):
        augment.build_pipeline("face", "nonexistent")


def test_an_older_region_name_is_read_as_the_crop_it_was():
    from agefuse.branches import BRANCH_REGIONS, current_model_args
    for old, crop in (("face_alt", "face"), ("original_alt", "original"), ("original_alt2", "original"),
                      ("face_chip_alt", "face_chip")):
        assert old not in BRANCH_REGIONS
        assert current_model_args({"region": old, "model": "small_cnn"})["region"] == crop
    assert augment.describe(augment.build_pipeline("face", "light")) != augment.describe(augment.build_pipeline("face"))
