"""The fused model: frozen region branches, and a dense head over their outputs.

Each branch gives, per face, its embedding, its age and its gender logit (``eyes`` averages
its two views: the left eye and the mirrored right eye). The head reads them all, each
branch's block multiplied by a presence flag that is also an input, so a face with a crop
missing (a mouth hidden, say) is still scored from the rest.

The head's age is a distribution over 0..max_age: its expectation is the estimate, and its
quantiles (after a temperature fitted so that the stated interval holds as often as it says)
give the age interval.
"""
from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from agefuse.branches import (
    AGE,
    BRANCH_REGIONS,
    EMBEDDING,
    GENDER_LOGIT,
    MAX_AGE,
    MIRROR_INVARIANT,
    RENAMED_REGIONS,
    FoldAverage,
    current_model_args,
    fold_norms,
    load_branch,
    model_from_args,
    read_torch_file,
)
from agefuse.files import atomic_write
from agefuse.regions import Settings as CropSettings
from agefuse.regions import manifest


class BranchBlock:
    """One branch's block of the head's input, by name: ``EMBEDDING`` (``embedding_dim``
    columns), then ``AGE`` / ``AGE_SCALE``, then ``GENDER_LOGIT``, averaged over the branch's
    views. ``FusedModel.features`` packs it; whoever reads branch outputs back (evaluation,
    the fusion summary) goes through ``age`` and ``gender_logit``, never a column number."""
    AGE_SCALE = 100.0  # ages enter the head in hundreds of years, near the embedding's range

    def __init__(self, embedding_dim: int):
        self.embedding_dim = embedding_dim
        self.columns = {EMBEDDING: slice(0, embedding_dim), AGE: embedding_dim, GENDER_LOGIT: embedding_dim + 1}
        self.width = embedding_dim + 2

    def pack(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([out[EMBEDDING], out[AGE][:, None] / self.AGE_SCALE, out[GENDER_LOGIT][:, None]], 1)

    def age(self, features):
        """Each branch's own age, in years, from (..., F) features."""
        return features[..., self.columns[AGE]] * self.AGE_SCALE

    def gender_logit(self, features):
        return features[..., self.columns[GENDER_LOGIT]]


class FusionHead(nn.Module):
    """Age and gender from the branches' blocks. With ``separate_gender`` gender has layers of
    its own, sharing none with age: the age loss no longer shapes what gender reads, and
    agefuse-train-fusion keeps each part from the epoch that suits it (age's best epoch is
    often the first, before gender has learnt to lean on its strongest branch)."""
    GENDER_PARTS = ("gender_body.", "gender.")  # its parameters' names, with separate_gender

    def __init__(self, in_features: int, max_age: int = MAX_AGE, hidden: int = 256, dropout: float = 0.3,
                 separate_gender: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden // 2), nn.ReLU(inplace=True))
        self.age = nn.Linear(hidden // 2, max_age + 1)
        self.gender_body = (nn.Sequential(nn.Linear(in_features, hidden // 4), nn.ReLU(inplace=True),
                                          nn.Dropout(dropout)) if separate_gender else None)
        self.gender = nn.Linear(hidden // 4 if separate_gender else hidden // 2, 1)

    @property
    def separate_gender(self) -> bool:
        return self.gender_body is not None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(features)
        gender_hidden = hidden if self.gender_body is None else self.gender_body(features)
        return self.age(hidden), self.gender(gender_hidden).squeeze(1)


class HeadAverage(nn.Module):
    """Several FusionHeads, trained apart from different seeds, as one: age the mean of their
    distributions, gender the mean of their probabilities, each returned as logits so the
    rest of the model reads it as one head's. One head's worst decade swung 8.31-8.66 over
    five seeds on cpu-budget-v5's features (42 faces aged 80-89); five heads' mean 8.42-8.44."""

    def __init__(self, members: list[FusionHead]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def separate_gender(self) -> bool:
        return self.members[0].separate_gender

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [member(features) for member in self.members]
        age = torch.stack([logits.log_softmax(1) for logits, _ in outputs]).logsumexp(0) - math.log(len(outputs))
        female = torch.stack([torch.sigmoid(logit) for _, logit in outputs]).mean(0).clamp(1e-7, 1 - 1e-7)
        return age, torch.log(female) - torch.log1p(-female)


def create_head(in_features: int, max_age: int = MAX_AGE, separate_gender: bool = False, heads: int = 1) -> nn.Module:
    """One FusionHead, or ``heads`` of them averaged (HeadAverage)."""
    if heads == 1:
        return FusionHead(in_features, max_age, separate_gender=separate_gender)
    return HeadAverage([FusionHead(in_features, max_age, separate_gender=separate_gender) for _ in range(heads)])


def head_input(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(N, R, F) branch features and (N, R) presence -> (N, R*F + R), absent blocks zeroed."""
    present = present.float()
    return torch.cat([(features * present[:, :, None]).flatten(1), present], dim=1)


class FusedModel(nn.Module):
    INTERVAL = 0.8  # the stated age interval's coverage, unless agefuse-train-fusion --interval says
    # forward's columns (for export), then one age per branch; the interval's ends are whole
    # years (a count of the distribution's bins), so another runtime may flip one by a year
    COLUMNS = ("age", "age_low", "age_high", "gender_female")
    WHOLE_YEARS = ("age_low", "age_high")

    MIRROR = False  # the branches of MIRROR_INVARIANT regions also see their crop mirrored, if --mirror

    def __init__(self, branches: dict[str, nn.Module], image_sizes: dict[str, int], max_age: int = MAX_AGE,
                 interval: float = INTERVAL, crop_settings: CropSettings | None = None, mirror: bool = MIRROR,
                 separate_gender: bool = False, heads: int = 1, crops: dict[str, str] | None = None):
        super().__init__()
        # branches by name, in the head's input order; ``crops``: each one's region (the crops
        # it reads, BRANCH_REGIONS), by default its name (a branch named after its region)
        self.regions = list(branches)
        self.crops = {name: (crops or {}).get(name, name) for name in self.regions}
        unknown = sorted(crop for crop in self.crops.values() if crop not in BRANCH_REGIONS)
        if unknown:
            raise ValueError(f"unknown region {unknown[0]!r}; choose from {', '.join(sorted(BRANCH_REGIONS))}")
        self.branches = nn.ModuleList(branches[r] for r in self.regions)
        self.image_sizes = [image_sizes[r] for r in self.regions]
        widths = {r: b.embedding_dim for r, b in branches.items()}
        if len(set(widths.values())) > 1:
            raise ValueError("the branches' embeddings differ in width (" + ", ".join(
                f"{r} {w}" for r, w in widths.items()) + "): train them with one --embedding-dim")
        self.block = BranchBlock(widths[self.regions[0]])
        self.head = create_head(len(self.regions) * (self.block.width + 1), max_age, separate_gender, heads)
        # how the faces this model learned from were found and cropped: predict and watch
        # cut theirs the same way (fusion.find_faces)
        self.crop_settings = crop_settings or CropSettings()
        self.register_buffer("ages", torch.arange(max_age + 1, dtype=torch.float32))
        self.register_buffer("temperature", torch.ones(()))
        self.interval = interval
        # a mirrored face is the same face (the branches trained on flips of it): averaging a
        # crop's two mirror images steadies the estimate. The eyes branch already sees a left
        # eye and a mirrored right eye, which are its two views.
        self.mirror = mirror
        self.mirrored = {r for r in self.regions if mirror and self.crops[r] in MIRROR_INVARIANT}

    def features(self, views: list[torch.Tensor], pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """``views[i]``: (N, V, 3, H, W) uint8 crops of branch i -> (N, R, F): embedding,
        age / 100, gender logit, averaged over the views (and their mirror images, in the
        regions ``mirrored``).

        With a thread ``pool`` the branches run side by side, a mirrored branch's two halves
        (its crops, their mirror images) and a cross-fitted branch's fold branches (FoldAverage)
        as tasks of their own: for a photo's few faces that is the faster way to use several
        cores: a batch-1 conv gains almost nothing from a second intra-op thread, two at once
        nearly halve the time. The mean of the tasks' blocks is the mean over all views and
        folds, as without a pool (a block is linear in the branch's outputs)."""
        if pool is None:
            blocks = [self.branch_block(*args)[0] for args in zip(self.regions, self.branches, views)]
            return torch.stack(blocks, 1)
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        tasks = [(region, part, half) for region, branch, images in zip(self.regions, self.branches, views)
                 for part in self.parts(branch)
                 for half in ([images, images.flip(-1)] if region in self.mirrored else [images])]

        def in_caller_mode(task) -> torch.Tensor:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):  # thread-local modes
                return self.views_block(*task)
        halves = list(pool.map(in_caller_mode, tasks))
        blocks = [torch.stack([h for (r, _, _), h in zip(tasks, halves) if r == region]).mean(0)
                  for region in self.regions]
        return torch.stack(blocks, 1)

    @staticmethod
    def parts(branch: nn.Module) -> list[nn.Module]:
        """What of a branch runs as a task of its own: a FoldAverage's members, else the branch."""
        return list(branch.members) if isinstance(branch, FoldAverage) else [branch]

    def task_count(self) -> int:
        """How many tasks ``features`` gives a pool."""
        return sum(len(self.parts(b)) * (2 if r in self.mirrored else 1) for r, b in zip(self.regions, self.branches))

    def branch_block(self, region: str, branch: nn.Module, images: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One branch's (N, F) block of the head's input from its (N, V, 3, H, W) views, and
        the branch's own outputs for every view (N * V rows, face-major: what joint training
        scores each branch by)."""
        if region in self.mirrored:
            images = torch.cat([images, images.flip(-1)], 1)
        out = branch(images.flatten(0, 1))
        return self.pack_views(region, out, images.shape[:2]), out

    def views_block(self, region: str, branch: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The (N, F) block of a branch from exactly these views (no mirroring)."""
        return self.pack_views(region, branch(images.flatten(0, 1)), images.shape[:2])

    def pack_views(self, region: str, out: dict[str, torch.Tensor], shape) -> torch.Tensor:
        packed = self.block.pack(out)
        if packed.shape[1] != self.block.width:
            raise ValueError(f"the {region} branch gives {packed.shape[1] - 2} embedding features, the "
                             f"fusion head was built for {self.block.embedding_dim}: its head changed; "
                             f"train the fusion head again over it")
        return packed.view(*shape, -1).mean(1)

    @torch.no_grad()
    def trace(self) -> FusedModel:
        """For a process that estimates many faces (predict, watch, the API): each branch and the
        head traced and frozen by TorchScript, so no Python runs between its ops: at batch 1 on a CPU the
        branches are faster, most of all two side by side, which no longer take turns at the
        GIL (bench/branch_latency.py). Outputs are the same (tests/test_fusion.py).
        Trace last: after ``.to(device)`` and ``.eval()``; a traced model is not for saving.
        Where tracing fails (a torch without TorchScript), a warning, and the plain branches and head."""
        head_example = torch.zeros(1, len(self.regions) * (self.block.width + 1), device=self.ages.device)
        traced = []  # (branch, its traced parts): swapped in only once every part has traced
        try:
            with warnings.catch_warnings():
                # torch 2.14 marks TorchScript deprecated in favour of torch.compile, which
                # spends about a minute compiling the four branches here: too long for one photo
                warnings.simplefilter("ignore", FutureWarning)
                # the residuals' padding reads shapes: constants at the branch's one size
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                for branch, size in zip(self.branches, self.image_sizes):
                    example = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=self.ages.device)
                    traced.append((branch, [torch.jit.freeze(torch.jit.trace(part.eval(), example, strict=False))
                                            for part in self.parts(branch)]))
                # the head too: five small heads cost about 1 ms of Python a photo untraced, 0.3 traced
                head = torch.jit.freeze(torch.jit.trace(self.head.eval(), head_example))
        except (AttributeError, RuntimeError) as err:
            warnings.warn(f"the branches run untraced (TorchScript failed: {err})", stacklevel=2)
            return self
        for branch, parts in traced:
            if isinstance(branch, FoldAverage):  # its members traced apart, so a pool still runs them apart
                branch.members = nn.ModuleList(parts)
        self.branches = nn.ModuleList(branch if isinstance(branch, FoldAverage) else parts[0]
                                      for branch, parts in traced)
        self.head = head
        return self

    def outputs(self, views: list[torch.Tensor], present: torch.Tensor,
                pool: ThreadPoolExecutor | None = None) -> dict[str, torch.Tensor]:
        """Crops to estimates: ``predict(features(views, pool), present)``."""
        return self.predict(self.features(views, pool), present)

    def predict(self, features: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, gender_logit = self.head(head_input(features, present))
        probabilities = (logits / self.temperature).softmax(1)
        cdf = probabilities.cumsum(1)
        tail = (1.0 - self.interval) / 2
        return {"age": (logits.softmax(1) * self.ages).sum(1),
                "age_probabilities": probabilities,  # tempered: what the interval and age groups read
                "age_low": (cdf < tail).sum(1).float(),
                "age_high": (cdf < 1.0 - tail).sum(1).float(),
                "gender_female": torch.sigmoid(gender_logit),
                "branch_ages": self.block.age(features)}

    def forward(self, views: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """One tensor out (for export): the ``COLUMNS``, then each branch's own age."""
        out = self.predict(self.features(views), present)
        return torch.cat([out[name][:, None] for name in self.COLUMNS] + [out["branch_ages"]], 1)


def load_branches(paths: dict[str, str | Path]) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """Frozen branches from their checkpoints, keyed by name (each checkpoint's
    ``model_args["region"]`` says what it reads)."""
    branches, args = {}, {}
    for name, path in paths.items():
        model, model_args = load_branch(path)
        branches[name], args[name] = model.requires_grad_(False), model_args
    return branches, args


def renamed(name: str, args: dict) -> str:
    """A branch's name in a fused model: an older agefuse's name for a crop's further network
    (``original_alt``: RENAMED_REGIONS) becomes its crop and network (``original_gender_cnn``),
    as recipes name them now; any other name stays."""
    if name not in RENAMED_REGIONS:
        return name
    return f"{RENAMED_REGIONS[name]}_{str(args.get('model', 'branch')).removeprefix('dlib_')}"


def save_fused(model: FusedModel, branch_args: dict, path: Path, extra: dict) -> None:
    state = {"branch_args": branch_args, "model": model.state_dict(), "interval": model.interval,
             "crops": model.crop_settings.to_json(), "mirror": model.mirror, **extra}
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def head_count(weights: dict) -> int:
    """How many heads a saved model averages (HeadAverage: ``head.members.<n>.``); 1 for one head."""
    members = {int(k.split(".")[2]) for k in weights if k.startswith("head.members.")}
    if members and members != set(range(max(members) + 1)):
        raise ValueError(f"its heads are numbered {sorted(members)}, not 0 to {len(members) - 1}")
    return len(members) or 1


def check_shapes(model: FusedModel, weights: dict, path) -> None:
    """Every tensor of the file fits the model, or an error naming the branch (or the head)
    and the tensor: a branch whose head changed after the fusion head learned from it."""
    expected = model.state_dict()
    for key, value in weights.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            part = key.split(".")
            where = f"the {model.regions[int(part[1])]} branch" if part[0] == "branches" else "the fusion head"
            raise ValueError(f"{path}: {where} does not fit its settings "
                             f"({'.'.join(part[2:] if part[0] == 'branches' else part)}"
                             f" is {tuple(value.shape)} in the file, {tuple(expected[key].shape)} expected): was a "
                             f"branch's head changed after the fusion head was trained?")


DEFAULT_MODEL = Path(__file__).parent / "default" / "fused-utkface.pt"


def in_calibration_half(image_id: str) -> bool:
    """The half of a validation split that fits the interval's temperature (by a hash of the
    id); the other half checks it."""
    return manifest.hashed_share(str(image_id), 0.5, "calibration")


def save_half(source: str | Path, target: str | Path) -> Path:
    """A copy of a fused model with its weights in half precision (half the bytes; the
    small buffers, such as the input normalisation, stay exact). ``load_fused`` reads it
    back into float32."""
    state = read_torch_file(source, "agefuse model")
    state["model"] = {k: v.half() if v.is_floating_point() and v.numel() > 512 else v
                      for k, v in state["model"].items()}
    state["precision"] = "float16"
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        torch.save(state, tmp)
    return target


def load_fused(path: str | Path | None = None, device: str | torch.device = "cpu",
               fold: bool = True) -> tuple[FusedModel, dict]:
    """The fused model from its one file (branches included), frozen and in eval mode; without
    a path, the default model installed with agefuse. ``fold``: the norms folded into the
    convs (``fold_norms``), for inference only: its state_dict no longer has the file's
    layout, so load with ``fold=False`` a model to train further or save."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no fused model here (train one with agefuse-train-fusion)")
    state = read_torch_file(path, "agefuse model")
    if not isinstance(state, dict) or "branch_args" not in state:
        raise ValueError(f"{path}: not an agefuse fused model")
    if isinstance(state["branch_args"], dict):  # in today's terms; a removed setting is refused by name
        state["branch_args"] = {renamed(name, a) if isinstance(a, dict) else name:
                                current_model_args(a, f"{path} ({name} branch)") if isinstance(a, dict) else a
                                for name, a in state["branch_args"].items()}
    try:  # the file's fields, as written by save_fused; anything else is named, not a traceback
        branches = {region: model_from_args(a) for region, a in state["branch_args"].items()}
        # a model saved before crop settings were recorded was served with the defaults
        crops = CropSettings.from_json(state["crops"]) if "crops" in state else None
        model = FusedModel(branches, {r: a["image_size"] for r, a in state["branch_args"].items()},
                           interval=float(state["interval"]), crop_settings=crops,
                           mirror=state.get("mirror", False) is True,
                           separate_gender=any(k.startswith(("head.gender_body.", "head.members.0.gender_body."))
                                               for k in state["model"]),
                           heads=head_count(state["model"]),
                           crops={name: a.get("region", name) for name, a in state["branch_args"].items()})
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not an agefuse fused model (its fields do not fit: {err!r:.120})") from None
    check_shapes(model, state["model"], path)
    model.load_state_dict(state["model"])
    model = model.requires_grad_(False).eval()
    return (fold_norms(model) if fold else model).to(device), state
