"""A teacher's soft targets for distillation: what a student branch (and its head) learns beside the labels.

``agefuse-distill`` (``agefuse.fusion.distill``) writes them, one row per face of the cache:
``teacher-targets.npz`` with ``id``, ``split``, ``age_probabilities`` (N, max_age + 1: the
teacher's age distribution), ``female`` (N,: its probability of female) and ``out_of_fold``
(N,: the row came from fold branches that never saw the face). This module reads them for a
list of faces and adds the teacher's term to a branch's loss.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .model import AGE_LOGITS, GENDER_LOGIT, GENDER_WEIGHT

TARGETS = "teacher-targets.npz"
FIELDS = ("id", "split", "age_probabilities", "female", "out_of_fold")
DISTILL_WEIGHT = 0.5  # the teacher's share of the loss; the labels keep the rest


def add_teacher_options(parser, learner: str) -> None:
    """``--teacher`` and ``--distill-weight``, as the branch and fusion commands both take them."""
    from agefuse.cli import float_in
    parser.add_argument("--teacher", default=None, metavar="TARGETS.npz",
                        help=f"a teacher's soft targets (agefuse-distill's {TARGETS}): the {learner} also learns "
                             "the teacher's age distribution and gender probability on each training face")
    parser.add_argument("--distill-weight", type=float_in(0, 1), default=DISTILL_WEIGHT,
                        help=f"with --teacher: the teacher's share of the {learner}'s training loss (the labels "
                             "keep the rest)")


class TeacherError(ValueError):
    """A teacher-targets file that cannot serve these faces; the message names it."""


def read_targets(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a teacher-targets file, checked: every field, one row per face, probabilities that sum to 1."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"{path}: no teacher targets here (write them with agefuse-distill)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in FIELDS}
    except (OSError, ValueError, KeyError) as err:
        raise TeacherError(f"{path}: not a teacher-targets file ({str(err).splitlines()[0][:120]})") from None
    rows = len(arrays["id"])
    if any(len(arrays[k]) != rows for k in FIELDS) or arrays["age_probabilities"].ndim != 2:
        raise TeacherError(f"{path}: its fields differ in length: not a teacher-targets file as agefuse-distill writes")
    sums = arrays["age_probabilities"].astype(np.float64).sum(1)
    if rows and (not np.isfinite(sums).all() or np.abs(sums - 1).max() > 1e-2):
        raise TeacherError(f"{path}: its age distributions do not sum to 1")
    arrays["id"] = arrays["id"].astype(str)
    return arrays


def targets_for(path: str | Path, ids, bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's (age distribution (N, bins), probability of female (N,), known (N,)) for
    ``ids``, in their order; a face the file lacks is not known (its teacher term is zero)."""
    data = read_targets(path)
    if data["age_probabilities"].shape[1] != bins:
        raise TeacherError(f"{path}: the teacher's ages run over {data['age_probabilities'].shape[1]} years, this "
                           f"branch's over {bins}: give both one --max-age")
    where = {face: i for i, face in enumerate(data["id"])}
    index = np.array([where.get(str(face), -1) for face in ids])
    known = index >= 0
    probabilities = np.zeros((len(index), bins), np.float32)
    female = np.full(len(index), 0.5, np.float32)
    probabilities[known] = data["age_probabilities"][index[known]]
    female[known] = data["female"][index[known]]
    return torch.from_numpy(probabilities), torch.from_numpy(female), torch.from_numpy(known)


class WithTeacher(Dataset):
    """A ``RegionDataset`` whose samples also carry the teacher's targets for their face:
    its five items, then the age distribution, the probability of female and whether the
    teacher knew the face. The sampler and the augmentation see the dataset it wraps."""

    def __init__(self, base, path: str | Path, bins: int):
        self.base = base
        ids = [base.rows[index]["id"] for _, _, index in base.samples]
        self.age, self.female, self.known = targets_for(path, ids, bins)
        self.missing = len({face for face, known in zip(ids, self.known.tolist()) if not known})

    @property
    def groups(self):
        return self.base.groups

    def reseed(self, seed: int) -> None:
        self.base.reseed(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return (*self.base[index], self.age[index], self.female[index], self.known[index])


def distill_loss(out: dict[str, torch.Tensor], age_probabilities: torch.Tensor, female: torch.Tensor,
                 known: torch.Tensor, gender_weight: float = GENDER_WEIGHT) -> torch.Tensor:
    """The teacher's term: the cross-entropy of the branch's age distribution against the
    teacher's (its KL divergence, plus the teacher's entropy, which no weight changes) and of
    its gender against the teacher's probability, over the faces the teacher knew."""
    if not known.any():
        return out[AGE_LOGITS].sum() * 0
    logits = out[AGE_LOGITS][known].float()
    age = -(age_probabilities[known] * logits.log_softmax(1)).sum(1).mean()
    gender = F.binary_cross_entropy_with_logits(out[GENDER_LOGIT][known].float(), female[known])
    return age + gender_weight * gender


def teacher_distance(age_logits: torch.Tensor, age_probabilities: torch.Tensor) -> torch.Tensor:
    """The mean KL divergence from the teacher's age distribution to the student's (0: the same)."""
    teacher = age_probabilities.clamp_min(1e-12)
    return (age_probabilities * (teacher.log() - age_logits.float().log_softmax(1))).sum(1).mean()
