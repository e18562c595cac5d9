"""A branch: a backbone, an embedding for the fusion head, and the age and gender heads.

The age head gives logits over whole years 0..max_age; the prediction is their expectation.
Trained with cross-entropy against a Gaussian soft label around the true age plus L1 on the
expectation (the soft label tells the network that 31 is nearly right for 30).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BACKBONES, build_backbone
from .data import RENAMED_REGIONS

# the defaults of every branch, named once: the training command and the factory refer here
MAX_AGE, EMBEDDING_DIM = 100, 128
GENDER_WEIGHT = 0.5  # the gender loss's weight beside the age loss
# What the backbone's features are multiplied by before the embedding layer. 1 for backbones
# whose features are about unit size per dimension; dlib's face descriptor is about 0.12 per
# dimension (norm 1.4 over 128), so its new layers start nearly bias-only and gender stayed
# at chance for the first rounds; 8 brings it to unit size.
FEATURE_SCALE = 1.0
# what a file written before a model argument existed was trained with
MODEL_ARG_DEFAULTS = {"feature_scale": FEATURE_SCALE, "fold": None, "averaged_folds": None}
# what a file written while an option still existed may hold, with the one value each has
# now: --age-head (dist, the age distribution; reg, one number, was dropped) and
# --fusion-holdout (0: none of the training split kept from the branches)
RETIRED_MODEL_ARGS = {"age_head": "dist", "fusion_holdout": 0.0}
RETIRED_BACKBONES = ("efficientnet_lite0", "resnet18", "resnet50")

# What a branch returns, by name (``BranchModel.forward``). The fusion stage reads the first
# three; ``age_logits`` is for the branch's own loss.
EMBEDDING, AGE, GENDER_LOGIT, AGE_LOGITS = "embedding", "age", "gender_logit", "age_logits"
BRANCH_OUTPUTS = (EMBEDDING, AGE, GENDER_LOGIT)


class BranchModel(nn.Module):
    def __init__(self, backbone: nn.Module, max_age: int = MAX_AGE, embedding_dim: int = EMBEDDING_DIM,
                 dropout: float = 0.2, feature_scale: float = FEATURE_SCALE):
        super().__init__()
        self.backbone = backbone
        self.max_age = max_age
        self.embedding_dim = embedding_dim  # the width of EMBEDDING: what a fusion head sizes itself by
        self.feature_scale = feature_scale
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255)
        self.register_buffer("ages", torch.arange(max_age + 1, dtype=torch.float32))
        self.embed = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.features, embedding_dim),
                                   nn.ReLU(inplace=True))
        self.age = nn.Linear(embedding_dim, max_age + 1)
        self.gender = nn.Linear(embedding_dim, 1)
        # channels-last sends every conv to oneDNN on the CPU: at batch 1 the default layout
        # falls back to a slow generic conv for most layers (dlib_age_resnet: 10 ms -> 5 ms)
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: (N, 3, H, W) RGB, 0..255 (uint8 or float). Returns ``EMBEDDING``
        (N, embedding_dim), ``AGE`` (N,) in years, ``GENDER_LOGIT`` (N,) (> 0: female) and
        ``AGE_LOGITS`` (N, max_age + 1)."""
        x = ((images.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        embedding = self.embed(self.backbone(x) * self.feature_scale)  # times 1.0 is exact: old models unchanged
        logits = self.age(embedding)
        return {EMBEDDING: embedding, GENDER_LOGIT: self.gender(embedding).squeeze(1), AGE_LOGITS: logits,
                AGE: (logits.float().softmax(1) * self.ages).sum(1)}


def create_model(name: str, *, max_age: int = MAX_AGE, embedding_dim: int = EMBEDDING_DIM,
                 pretrained: bool = True, weights: str | None = None,
                 feature_scale: float = FEATURE_SCALE) -> BranchModel:
    """The one factory: ``name`` is a key of ``BACKBONES``."""
    return BranchModel(build_backbone(name, pretrained=pretrained, weights=weights),
                       max_age=max_age, embedding_dim=embedding_dim, feature_scale=feature_scale)


class FoldAverage(nn.Module):
    """One region's K fold branches (``agefuse-train-branch --fold I/K``, each trained on the
    faces the others left out) as one branch: every output the mean of theirs. Cross-fitting:
    the fusion head learns each fold branch's outputs on the faces it left out, and a new face
    gets the mean of all K, so no branch on every training face need be trained (over cpu-budget-v4's
    branches the fusion scored as well this way as with the full branches, docs/benchmarks.md)."""

    def __init__(self, members: list[BranchModel]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.embedding_dim = members[0].embedding_dim

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [member(images) for member in self.members]
        return {name: torch.stack([out[name] for out in outs]).mean(0) for name in outs[0]}


def current_model_args(args: dict, source: object = "model_args") -> dict:
    """A file's ``model_args`` in this version's terms: the arguments added since it was
    written at the value it was trained with (``MODEL_ARG_DEFAULTS``), those of options removed
    since left out where they hold the one value still supported (``RETIRED_MODEL_ARGS``).
    A removed value or backbone is a ``ValueError`` of one line naming ``source`` (the file)."""
    for key, kept in RETIRED_MODEL_ARGS.items():
        if key in args and args[key] != kept:
            raise ValueError(f"{source}: trained with --{key.replace('_', '-')} {args[key]!r}, which agefuse no "
                             f"longer has (only {kept!r}): train it again with this version")
    if args.get("model") in RETIRED_BACKBONES:
        raise ValueError(f"{source}: a {args['model']} branch, a backbone agefuse no longer has: train it "
                         f"again with one of {', '.join(model_names())}")
    current = {**MODEL_ARG_DEFAULTS, **{k: v for k, v in args.items() if k not in RETIRED_MODEL_ARGS}}
    if current.get("region") in RENAMED_REGIONS:  # an older name for a crop's further network
        current["region"] = RENAMED_REGIONS[current["region"]]
    return current


def model_from_args(args: dict) -> BranchModel | FoldAverage:
    """An untrained branch shaped as a file's ``model_args`` say (a branch checkpoint's, or a
    fused model's ``branch_args``; ``current_model_args``), ready for its state_dict. With
    ``averaged_folds`` K, a ``FoldAverage`` of K such branches."""
    args = current_model_args(args)
    if args["averaged_folds"]:
        return FoldAverage([model_from_args({**args, "averaged_folds": None})
                            for _ in range(int(args["averaged_folds"]))])
    return create_model(args["model"], max_age=args["max_age"], embedding_dim=args["embedding_dim"],
                        pretrained=False, feature_scale=float(args["feature_scale"]))


def model_names() -> list[str]:
    return sorted(BACKBONES)


def soft_targets(age_range: torch.Tensor, bins: int, sigma: float = 2.0) -> torch.Tensor:
    """(N, bins) target distributions over whole years for (N, 2) age labels (low, high):
    every year of the range, each blurred by a Gaussian of ``sigma`` years, normalised. An
    exact age (low == high) is one Gaussian around it; a range spreads its mass over the
    whole range (not its midpoint). Years past the last bin count as the last."""
    ages = torch.arange(bins, device=age_range.device, dtype=torch.float32)
    low, high = (age_range[:, i].float().clamp(0, bins - 1)[:, None] for i in (0, 1))
    inside = ((ages[None] >= low.round()) & (ages[None] <= high.round())).float()
    kernel = torch.exp(-0.5 * ((ages[:, None] - ages[None, :]) / sigma) ** 2)
    target = inside @ kernel
    return target / target.sum(1, keepdim=True)


def branch_loss(out: dict[str, torch.Tensor], age: torch.Tensor, gender: torch.Tensor,
                sigma: float = 2.0, gender_weight: float = GENDER_WEIGHT,
                age_range: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts. ``gender`` < 0 marks an unknown gender (no gender loss).
    ``age_range`` (N, 2): the labels as (low, high) (default: ``age`` exact); a range is
    trained as what it says: the distribution's target spread over it (``soft_targets``),
    and the expectation's L1 only for leaving it.

    Ages above the head's ``max_age`` count as ``max_age`` (the head cannot say more)."""
    if age_range is None:
        age_range = torch.stack([age, age], 1)
    low, high = age_range[:, 0].float(), age_range[:, 1].float()
    l1 = ((low - out[AGE]).clamp(min=0) + (out[AGE] - high).clamp(min=0)).mean()
    target = soft_targets(age_range, out[AGE_LOGITS].shape[1], sigma)
    age_loss = -(target * out[AGE_LOGITS].float().log_softmax(1)).sum(1).mean() + 0.1 * l1
    known = gender >= 0
    gender_loss = (F.binary_cross_entropy_with_logits(out[GENDER_LOGIT][known].float(),
                                                      gender[known].float())
                   if known.any() else out[GENDER_LOGIT].sum() * 0)
    total = age_loss + gender_weight * gender_loss
    return total, {"age_l1": l1.detach(), "gender_bce": gender_loss.detach()}
