"""Would the fusion head do better run over each fold branch's block than over their mean?

The head learns each training face's block from the one fold branch that left it out; a new
face gets the mean of the K fold branches' blocks, embeddings included (FoldAverage). This
bench compares, on a run's validation faces, the fused model as it is against the head run
over each part's blocks alone (every cross-fitted region from its fold branch that left part I
out, as the head saw a training face of part I) and those K predictions averaged, and shows
how far the fold branches' embeddings agree.

    python bench/fold_blocks.py --run bench/out/cpu-long-v11

Run it from the folder the run was made in.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn.functional import cosine_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agefuse.branches import FoldAverage  # noqa: E402
from agefuse.fusion.metrics import gender_report  # noqa: E402
from agefuse.fusion.model import FusedModel  # noqa: E402
from median_estimate import load_run, one_branch, report, run_parser, validation_images  # noqa: E402


def fold_blocks(run: Path, model: FusedModel, region: str, ids) -> torch.Tensor:
    """(K, N, F): the region's block from each of its fold branches, in the order of the parts they left out."""
    single = one_branch(model, region)
    blocks = []
    with torch.inference_mode():
        for _, images in validation_images(run, single, ids):
            blocks.append(torch.stack([single.branch_block(region, member, images)[0]
                                       for member in FusedModel.parts(single.branches[0])]))
    return torch.cat(blocks, 1)


def main() -> int:
    args = run_parser(__doc__).parse_args()
    model, _, data = load_run(args)
    cached, present = torch.from_numpy(data["features"]), torch.from_numpy(data["present"])
    width = model.block.embedding_dim

    folds = {}  # cross-fitted region -> (K, N, F)
    for region, branch in zip(model.regions, model.branches):
        if not isinstance(branch, FoldAverage):
            continue
        folds[region] = blocks = fold_blocks(args.run, model, region, data["id"])
        if not torch.allclose(blocks.mean(0), cached[:, model.regions.index(region)], atol=1e-4):
            raise ValueError(f"{region}: the fold branches' mean is not the cached block; is this the run's cache?")
        embeddings = blocks[..., :width]
        pairs = [(i, j) for i in range(len(blocks)) for j in range(i + 1, len(blocks))]
        agree = torch.stack([cosine_similarity(embeddings[i], embeddings[j], dim=1) for i, j in pairs])
        print(f"{region}: {len(blocks)} fold branches, their embeddings' cosine similarity per face (every pair): "
              f"median {agree.median():.3f}; median norm " + " / ".join(f"{e.norm(dim=1).median():.1f}" for e in embeddings)
              + f", of their mean {embeddings.mean(0).norm(dim=1).median():.1f}")
    if not folds:
        raise SystemExit(f"{args.run}: no cross-fitted region (agefuse-train-fusion --cross-fit): nothing to compare")
    counts = {len(blocks) for blocks in folds.values()}
    if len(counts) != 1:
        raise ValueError(f"the cross-fitted regions have different fold counts ({sorted(counts)}): their parts differ")

    def show(tag, out):
        print(f"{tag}: gender {gender_report(data['gender'], out['gender_female'].numpy())['accuracy']:.2%}")
        report("fused", data["age"], out["age"].numpy())

    with torch.inference_mode():
        show(f"the fused model (the folds' mean block), {len(data['age'])} validation faces", model.predict(cached, present))
        outputs = []
        for k in range(counts.pop()):  # parts are numbered from 1 (agefuse-train-branch --fold I/K)
            features = cached.clone()
            for region, blocks in folds.items():
                features[:, model.regions.index(region)] = blocks[k]
            outputs.append(model.predict(features, present))
            show(f"the head over the fold branches that left part {k + 1} out", outputs[-1])
        # the expected age is linear in the distribution: the mean of the K ages is that of the mixed distributions
        show("the head over each part's fold branches, averaged", {name: torch.stack([out[name] for out in outputs]).mean(0)
                                                     for name in ("age", "gender_female")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
