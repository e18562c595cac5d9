"""Does dlib's frozen face descriptor add to the fusion's gender? A probe over a finished run.

Issue 16 measured, on the model installed then, that the frozen 128-D descriptor of dlib's
face-recognition ResNet stacked on the fused outputs raised gender 92.4 -> 93.0 %. This asks
it again of a run whose branches already fine-tune that ResNet: logistic regression for gender
over the head's inputs (the branches' gender logits, or every column), trained on the run's
training faces (out-of-fold blocks where the run has them, as its head saw them), with and
without the descriptor of each face's ``face_chip`` crop (dlib's own framing, computed by
``dlib.face_recognition_model_v1``), scored on the validation split. The test split is never read.

    python bench/descriptor_gender.py --run bench/out/cpu-long-gw4 --train-faces 6000
"""
import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fusion_subsets import head_features  # noqa: E402
from agefuse.fusion import BranchBlock  # noqa: E402
from agefuse.fusion.model import head_input  # noqa: E402
from agefuse.regions import manifest  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a bench/utk_accuracy.py run folder (cache/, fused/)")
    parser.add_argument("--train-faces", type=int, default=6000,
                        help="training faces to fit on (dlib computes ~13 descriptors/s per core here)")
    parser.add_argument("--seed", type=int, default=0, help="draws the training faces")
    parser.add_argument("--workers", type=int, default=2, help="processes computing descriptors")
    parser.add_argument("--C", default="0.01,0.1,1", help="logistic regression's inverse regularisation, comma-separated")
    return parser


_dlib_model = None


def load_dlib_model() -> None:
    """Each worker process loads dlib's network once."""
    global _dlib_model
    import dlib
    from agefuse.branches.dlib_face import face_recognition_dat
    _dlib_model = dlib.face_recognition_model_v1(str(face_recognition_dat()))


def descriptors(paths: list[str]) -> np.ndarray:
    """128-D descriptors of the given face_chip crops, in order."""
    chips = [np.ascontiguousarray(cv2.imread(path)[:, :, ::-1]) for path in paths]
    return np.array([np.array(d) for d in _dlib_model.compute_face_descriptor(chips)], np.float32)


def main(args: argparse.Namespace) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    run = head_features(args.run)
    train, val = run.train, run.val
    # the features' rows follow the manifest, whose ids begin with the age as text: draw, not slice
    pick = np.random.default_rng(args.seed).permutation(len(train["id"]))[:args.train_faces]
    train = {k: v[pick] for k, v in train.items()}
    cache = args.run / "cache"
    crop = {row["id"]: str(cache / row["crops"]["face_chip"])
            for row in manifest.load(cache) if "face_chip" in row.get("crops", {})}
    splits = {}
    for name, faces in (("train", train), ("val", val)):
        keep = np.array([i in crop for i in faces["id"]]) & (faces["gender"] >= 0)  # -1: gender unknown
        splits[name] = {k: v[keep] for k, v in faces.items()}
    ids = [i for faces in splits.values() for i in faces["id"]]
    chunks = [[crop[i] for i in ids[n:n + 256]] for n in range(0, len(ids), 256)]
    print(f"descriptors of {len(ids)} face_chip crops on {args.workers} processes ...", flush=True)
    with ProcessPoolExecutor(args.workers, initializer=load_dlib_model) as pool:
        desc = np.concatenate(list(pool.map(descriptors, chunks)))
    count = len(splits["train"]["id"])
    splits["train"]["desc"], splits["val"]["desc"] = desc[:count], desc[count:]
    print(f"{count} training faces, {len(splits['val']['id'])} validation faces (gender known)")
    block = BranchBlock(train["features"].shape[2] - 2)
    inputs = {"branch gender logits": lambda f: block.gender_logit(f["features"]),
              "every head input": lambda f: head_input(torch.from_numpy(f["features"]),
                                                       torch.from_numpy(f["present"])).numpy()}
    for C in map(float, args.C.split(",")):
        for label, columns in inputs.items():
            for with_desc in (False, True):
                x = {s: np.c_[columns(f), f["desc"]] if with_desc else columns(f) for s, f in splits.items()}
                scale = StandardScaler().fit(x["train"])
                fit = LogisticRegression(C=C, max_iter=3000).fit(scale.transform(x["train"]), splits["train"]["gender"])
                hit = fit.predict(scale.transform(x["val"])) == splits["val"]["gender"]
                print(f"C={C:<5} {label + (' + frozen descriptor' if with_desc else ''):45s} "
                      f"val gender {100 * hit.mean():.2f}%", flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
