"""Is the mean of a cross-fitted region's fold branches a fair input for the fusion head?

The head learns each training face's block from the one fold branch that left it out; a new
face gets the mean of the K fold branches' blocks, embeddings included (FoldAverage). If the
fold branches' embeddings had drifted apart, their mean would be an input the head never saw.
This bench compares, on a run's validation faces, the fused model as it is against the head
run over each fold's blocks alone (every cross-fitted region from fold k, as a training face
of part k saw them) and those K outputs averaged.

    python bench/fold_blocks.py --run bench/out/cpu-long-v11

Run it from the folder the run was made in.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn.functional import cosine_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusion.metrics import gender_report  # noqa: E402
from fusion.model import head_input, load_fused  # noqa: E402
from median_estimate import report, validation_features  # noqa: E402
from shifted_views import region_blocks  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/utk_accuracy.py --out folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_fused(args.run / "fused" / "fused.pt", fold=False)
    checkpoints = json.loads((args.run / "fused" / "fusion.json").read_text())["branches"]
    data = validation_features(args.run, model, checkpoints)
    cached, present = torch.from_numpy(data["features"]), torch.from_numpy(data["present"])
    width = model.block.embedding_dim

    folds = {}
    for region, given in checkpoints.items():
        if isinstance(given, str):
            continue  # one branch: nothing to compare
        folds[region] = blocks = region_blocks(args.run, region, given, model.mirror, data["id"])
        r = model.regions.index(region)
        if not torch.allclose(blocks.mean(0), cached[:, r], atol=1e-4):
            raise ValueError(f"{region}: the fold branches' mean is not the cached block; is this the run's cache?")
        embeddings = blocks[..., :width]
        print(f"{region}: {len(blocks)} fold branches, their embeddings' cosine similarity per face: median "
              f"{cosine_similarity(embeddings[0], embeddings[1], dim=1).median():.3f}; median norm "
              + " / ".join(f"{e.norm(dim=1).median():.1f}" for e in embeddings)
              + f", of their mean {embeddings.mean(0).norm(dim=1).median():.1f}")

    def fused(features):
        with torch.inference_mode():
            logits, gender_logit = model.head(head_input(features, present))
        return logits.softmax(1), torch.sigmoid(gender_logit)

    def show(tag, probabilities, female):
        print(f"{tag}: gender {gender_report(data['gender'], female.numpy())['accuracy']:.2%}")
        report("fused", data["age"], (probabilities * model.ages).sum(1).numpy())

    show("the fused model (the folds' mean block)", *fused(cached))
    outputs = []
    for k in range(min(len(b) for b in folds.values())):
        features = cached.clone()
        for region, blocks in folds.items():
            features[:, model.regions.index(region)] = blocks[k]
        outputs.append(fused(features))
        show(f"the head over fold {k}'s blocks", *outputs[-1])
    show("the head over each fold's blocks, averaged", torch.stack([p for p, _ in outputs]).mean(0),
         torch.stack([f for _, f in outputs]).mean(0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
