"""Recipes: one TOML file per training configuration (``recipes/*.toml``).

A recipe fixes every stage's settings, round counts included, so the same recipe and seed
give the same model on any machine; nothing is planned from a speed probe. Its sections
are the options of each stage's command, by their long names (``image-size`` or
``image_size``), checked against that command's own parser, so a recipe can say nothing a
command would not accept and a misspelt key is an error naming the file and the key:

    name = "cpu-budget"          # a label for the results
    seed = 0                     # every stage's --seed
    device = "cpu"               # the branches' and the head's --device
    budget_minutes = 60          # what the run is meant to fit in (reported, not enforced)

    [regions]                    # agefuse-regions options
    [branch]                     # agefuse-train-branch options shared by every branch
    [branches.<name>]            # one table per branch, in training order: its own options,
                                 # crop = its region (default: the name) and model = its network
    [out-of-fold]                # optional: folds = K, regions = [...]: those branches also train K
                                 # times, each leaving a K-th of the training faces out, for the head
                                 # (with [fusion] cross-fit = true, instead of their full branch)
    [fusion]                     # agefuse-train-fusion options
    [joint]                      # optional: agefuse-train-joint options (branches and head fine-tuned together)
    [distill]                    # optional: teacher = "other.toml" (a recipe, the path relative to this
                                 # file), distill-weight = 0.5: the branches and head above are a student
                                 # that learns the teacher's outputs beside the labels (agefuse-distill);
                                 # a branch table's init = "teacher:NAME" starts it from the teacher's
                                 # branch NAME (or NAME-foldIofK)
    [ablation]                   # optional: region = "...", and options for its variants

``agefuse-train FILE --source DIR --out OUT`` runs one (``agefuse.train``); a run writes the
recipe as run and the git commit next to its results.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

TOP_LEVEL = ("name", "seed", "device", "budget_minutes", "regions", "branch", "branches", "out-of-fold", "fusion",
             "joint", "ablation", "description", "distill")
DISTILL_KEYS = ("teacher", "distill-weight")
TEACHER_INIT = "teacher:"  # a branch's init = "teacher:NAME": the teacher run's branch NAME


@dataclass
class Recipe:
    path: Path
    name: str
    seed: int
    device: str
    budget_minutes: float | None
    regions: dict = field(default_factory=dict)
    branches: dict[str, dict] = field(default_factory=dict)  # region -> its options, shared ones merged in
    out_of_fold: dict = field(default_factory=dict)  # folds, regions; empty: none
    fusion: dict = field(default_factory=dict)
    joint: dict = field(default_factory=dict)  # empty: no joint stage
    ablation: dict = field(default_factory=dict)
    description: str = ""
    distill: dict = field(default_factory=dict)  # empty: not a student
    teacher: Recipe | None = None  # the [distill] table's teacher, loaded

    def to_json(self) -> dict:
        return {"path": str(self.path), "name": self.name, "seed": self.seed, "device": self.device,
                "budget_minutes": self.budget_minutes, "regions": self.regions, "branches": self.branches,
                "out_of_fold": self.out_of_fold, "fusion": self.fusion, "joint": self.joint, "ablation": self.ablation,
                "distill": self.distill, "teacher": self.teacher.to_json() if self.teacher else None}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from agefuse.branches import train_branch_parser
    from agefuse.fusion import train_fusion_parser, train_joint_parser
    from agefuse.regions import regions_parser
    return {"regions": regions_parser(), "branch": train_branch_parser(), "fusion": train_fusion_parser(),
            "joint": train_joint_parser()}


def _action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    dest = key.replace("-", "_")
    wanted = "--" + key.replace("_", "-")
    for action in parser._actions:
        if action.option_strings and (wanted in action.option_strings or action.dest == dest):
            return action
    return None


def to_argv(parser: argparse.ArgumentParser, options: dict, where: str) -> list[str]:
    """Command-line arguments for ``options`` (a recipe table), each checked against the
    command's parser: an unknown key or a value the option refuses is a ``ValueError``."""
    argv = []
    for key, value in options.items():
        action = _action(parser, key)
        if action is None:
            raise ValueError(f"{where}: {key!r} is not an option of this stage")
        if key.replace("_", "-").startswith("no-") and action.dest != key.replace("-", "_"):
            # a negative spelling would read as the switch's own value, the opposite of what it says
            raise ValueError(f"{where}: write {action.dest.replace('_', '-')} = true or false, not {key}")
        flag = action.option_strings[-1]
        switches = (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
        if isinstance(action, switches):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key} is a switch: true or false, not {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --mirror / --no-mirror
                argv.append(action.option_strings[0 if value else 1])
            elif value == isinstance(action, argparse._StoreTrueAction):
                argv.append(flag)
            continue
        argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def check(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    """Parse ``argv`` as the command would, turning its usage error into a ``ValueError``."""
    def refuse(message: str):
        raise ValueError(f"{where}: {message}")
    parser.error = refuse  # argparse would print usage and exit
    return parser.parse_args(argv)


def load(path: str | Path) -> Recipe:
    """A recipe from its TOML file, every table checked against its stage's parser."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recipe here (see recipes/ for the shipped ones)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a TOML recipe ({err})") from None
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; a recipe holds {', '.join(TOP_LEVEL)}")
    if not data.get("branches"):
        raise ValueError(f"{path}: no [branches.<region>] table: a recipe trains at least one branch")
    def must_be_table(name: str, value) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: [{name}] must be a table of options, not {type(value).__name__}")
    for name in ("regions", "out-of-fold", "fusion", "joint", "ablation", "branch", "branches", "distill"):
        must_be_table(name, data.get(name, {}))
    for region, options in data["branches"].items():
        must_be_table(f"branches.{region}", options)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{path}: seed must be a whole number, not {seed!r}")
    recipe = Recipe(path=path, name=str(data.get("name", path.stem)), seed=seed,
                    device=str(data.get("device", "auto")), budget_minutes=data.get("budget_minutes"),
                    regions=dict(data.get("regions", {})), fusion=dict(data.get("fusion", {})),
                    joint=dict(data.get("joint", {})), out_of_fold=dict(data.get("out-of-fold", {})),
                    ablation=dict(data.get("ablation", {})), description=str(data.get("description", "")),
                    distill=dict(data.get("distill", {})),
                    branches={region: {**data.get("branch", {}), **options}
                              for region, options in data["branches"].items()})
    parsers = _parsers()
    check(parsers["regions"], ["SOURCE", "--cache", "CACHE", *to_argv(parsers["regions"], recipe.regions,
                                                                     f"{path} [regions]")], f"{path} [regions]")
    for name, options in recipe.branches.items():
        where = f"{path} [branches.{name}]"
        check(parsers["branch"], ["--cache", "C", "--out", "O", *to_argv(parsers["branch"], with_crop(name, options),
                                                                           where)], where)
    check(parsers["fusion"], ["--cache", "C", "--out", "O", *to_argv(parsers["fusion"], recipe.fusion,
                                                                     f"{path} [fusion]")], f"{path} [fusion]")
    if recipe.out_of_fold:
        where, folds = f"{path} [out-of-fold]", recipe.out_of_fold.get("folds")
        if set(recipe.out_of_fold) != {"folds", "regions"}:
            raise ValueError(f"{where}: holds folds (a number, 2 or more) and regions (a list), nothing else")
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ValueError(f"{where}: folds must be a whole number of 2 or more, not {folds!r}")
        regions = recipe.out_of_fold["regions"]
        if not isinstance(regions, list) or not regions or any(r not in recipe.branches for r in regions):
            raise ValueError(f"{where}: regions must list some of the recipe's branches ({', '.join(recipe.branches)})")
    if recipe.fusion.get("cross-fit", recipe.fusion.get("cross_fit")) and not recipe.out_of_fold:
        raise ValueError(f"{path} [fusion]: cross-fit averages the fold branches of an [out-of-fold] table, "
                         f"and there is none")
    if recipe.joint:  # --fused must name a file that exists: the recipe itself stands in for it
        where = f"{path} [joint]"
        check(parsers["joint"], ["--cache", "C", "--fused", str(path), "--out", "O",
                                 *to_argv(parsers["joint"], recipe.joint, where)], where)
    if recipe.distill:
        recipe.teacher = load_teacher(recipe)
    if recipe.ablation:
        where = f"{path} [ablation]"
        region = recipe.ablation.get("region")
        if region not in recipe.branches:
            raise ValueError(f"{where}: region must name one of the recipe's branches ({', '.join(recipe.branches)})")
        options = {k: v for k, v in recipe.ablation.items() if k != "region"}
        check(parsers["branch"], ["--cache", "C", "--out", "O",
                                  *to_argv(parsers["branch"], with_crop(region, {**recipe.branches[region], **options}),
                                           where)], where)
    return recipe


def load_teacher(recipe: Recipe) -> Recipe:
    """The teacher recipe of ``recipe``'s [distill] table, checked, and every branch's
    ``init = "teacher:NAME"`` checked to name one of its branch runs."""
    where = f"{recipe.path} [distill]"
    unknown = sorted(set(recipe.distill) - set(DISTILL_KEYS))
    if unknown or "teacher" not in recipe.distill:
        raise ValueError(f"{where}: holds teacher (a recipe file) and optionally distill-weight (0 to 1), "
                         f"not {', '.join(unknown) or 'nothing'}")
    weight = recipe.distill.get("distill-weight", 0.5)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"{where}: distill-weight must be a number from 0 to 1, not {weight!r}")
    teacher = load(recipe.path.parent / str(recipe.distill["teacher"]))
    if recipe.regions and recipe.regions != teacher.regions:
        raise ValueError(f"{where}: a student reads its teacher's cache: leave [regions] out (the teacher's is "
                         f"{teacher.regions})")
    if teacher.distill:
        raise ValueError(f"{where}: the teacher {teacher.path} is a student itself: name the recipe it learns from")
    runs = set(teacher_runs(teacher))
    for name, options in recipe.branches.items():
        init = str(options.get("init", ""))
        if init.startswith(TEACHER_INIT) and init[len(TEACHER_INIT):] not in runs:
            raise ValueError(f"{recipe.path} [branches.{name}]: init = {init!r} names no branch run of the teacher "
                             f"({', '.join(sorted(runs))})")
    return teacher


def teacher_runs(recipe: Recipe) -> list[str]:
    """The branch run folders a recipe's run makes: its branches' names, and NAME-foldIofK."""
    folds = recipe.out_of_fold.get("folds", 0)
    return [*recipe.branches, *(f"{name}-fold{i}of{folds}" for name in recipe.out_of_fold.get("regions", [])
                                for i in range(1, folds + 1))]


def with_crop(name: str, options: dict) -> dict:
    """A branch table's options with its crop said: a table without ``crop`` (or ``region``)
    names a branch after its region (``[branches.mouth]``)."""
    return options if {"crop", "region"} & set(options) else {"crop": name, **options}


def fold_options(options: dict, fold: int, folds: int) -> dict:
    """A branch's options for its fold branch ``fold`` of ``folds``: the same, on (K-1)/K of the
    training faces, with the rounds cut alike, so that each face is drawn as often as in the
    full branch."""
    rounds = options.get("max-rounds", options.get("max_rounds"))
    cut = {} if rounds is None else {"max-rounds": max(1, -(-rounds * (folds - 1) // folds))}
    return {**{k: v for k, v in options.items() if k not in ("max-rounds", "max_rounds")}, **cut,
            "fold": f"{fold}/{folds}"}


def stage_argv(stage: str, options: dict) -> list[str]:
    """The command-line options of ``stage`` (regions, branch, fusion, joint) for a recipe table."""
    return to_argv(_parsers()[stage], options, stage)
