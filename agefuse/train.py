"""agefuse-train: every stage of a recipe, in order, from photos to an evaluated fused model.

    agefuse-train recipes/cpu-budget.toml --source ../shared/utkface --out runs/cpu-budget

Stages: regions (landmarks and crops) -> one branch per recipe table (and, with an
[out-of-fold] table, its fold branches) -> the fusion head -> (with a [joint] table) branches
and head fine-tuned together -> agefuse-evaluate on the validation split. Each stage is the
command a user could run alone: its command line is printed before it runs and its output
goes to ``OUT/logs/<stage>.log``.

A rerun with the same --out resumes: regions does only what is missing, a branch resumes
from its last.pt (a finished one has nothing to do), and the fusion, joint and evaluation
stages are skipped when their output exists and neither their command line nor the files
they read changed since (``OUT/stages.json``). Writes ``OUT/recipe.toml`` (the file as run)
and ``OUT/train.json`` (recipe, seed, commit, timings, the model and its validation figures).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agefuse import recipe as recipes
from agefuse.cli import HelpFormatter, existing_file, output_folder, run_command
from agefuse.files import atomic_write

TARGETS = "teacher-targets.npz"  # agefuse.branches.teacher.TARGETS, named here without importing torch
# each stage's console script and the module that is its entry point (run with this Python,
# so a recipe never depends on which agefuse is first on PATH)
COMMANDS = {"regions": ("agefuse-regions", "agefuse.regions.cli"),
            "branch": ("agefuse-train-branch", "agefuse.branches.train"),
            "fusion": ("agefuse-train-fusion", "agefuse.fusion.train"),
            "joint": ("agefuse-train-joint", "agefuse.fusion.joint"),
            "evaluate": ("agefuse-evaluate", "agefuse.fusion.evaluate"),
            "distill": ("agefuse-distill", "agefuse.fusion.distill")}
LOG_TAIL = 15  # lines of a failed stage's log shown


@dataclass
class Stage:
    """One command of a recipe's run. ``output``: a file that exists once the stage has run;
    with it, the stage is skipped on a rerun when ``argv`` and the ``inputs`` files are as they
    were. Without it, the stage always runs (it resumes by itself)."""
    name: str
    command: str  # a key of COMMANDS
    argv: list[str]
    output: Path | None = None
    inputs: list[Path] = field(default_factory=list)
    resume_from: Path | None = None  # a checkpoint: when it exists, the stage runs with --resume
    home: Layout | None = None  # the run whose stamps and logs it keeps (a teacher's stages: the teacher's)
    role: str = ""  # said before its name: "teacher " for a student's teacher's stages

    @property
    def title(self) -> str:
        return self.role + self.name

    def full_argv(self) -> list[str]:
        resume = self.resume_from is not None and self.resume_from.is_file()
        return [*self.argv, *(["--resume"] if resume else [])]

    def shown(self) -> str:
        """The command line as a user would type it."""
        return shlex.join([COMMANDS[self.command][0], *self.full_argv()])

    def stamp(self) -> dict:
        """What the stage's result depends on: its options and the files it reads."""
        def state(path: Path) -> list:
            info = path.stat() if path.is_file() else None
            return [str(path), info and info.st_size, info and info.st_mtime_ns]
        return {"argv": self.argv, "inputs": [state(path) for path in self.inputs]}


@dataclass
class Layout:
    """Where a recipe's run keeps each stage's files under OUT (a student: its teacher's cache)."""
    out: Path
    shared_cache: Path | None = None

    @property
    def cache(self) -> Path:
        return self.shared_cache or self.out / "cache"

    def branch(self, name: str) -> Path:
        return self.out / "branches" / name

    def fold(self, name: str, fold: int, folds: int) -> Path:
        return self.out / "branches" / f"{name}-fold{fold}of{folds}"

    @property
    def fused(self) -> Path:
        return self.out / "fused" / "fused.pt"

    @property
    def joint(self) -> Path:
        return self.out / "joint" / "fused.pt"

    @property
    def targets(self) -> Path:
        return self.out / "distill" / TARGETS

    @property
    def evaluation(self) -> Path:
        return self.out / "eval"

    @property
    def stamps(self) -> Path:
        return self.out / "stages.json"

    def log(self, stage: Stage) -> Path:
        return self.out / "logs" / (stage.name.replace(" ", "-").replace("/", "of") + ".log")


def cross_fitted(recipe: recipes.Recipe) -> set[str]:
    """Branches whose fold branches stand in for them (``[fusion] cross-fit``): no full branch."""
    if not recipe.fusion.get("cross-fit", recipe.fusion.get("cross_fit")):
        return set()
    return set(recipe.out_of_fold.get("regions", []))


def evaluate_stage(name: str, model: Path, layout: Layout, out: Path) -> Stage:
    return Stage(name, "evaluate", ["--model", str(model), "--cache", str(layout.cache), "--split", "val",
                                    "--out", str(out)], output=out / "evaluation.json", inputs=[model])


def final_model(recipe: recipes.Recipe, layout: Layout) -> Path:
    return layout.joint if recipe.joint else layout.fused


def teacher_plan(recipe: recipes.Recipe, source: str, layout: Layout, teacher: Layout) -> list[Stage]:
    """A student's first stages: its teacher's run (in ``teacher``, its own stamps and logs:
    a teacher run already made is resumed, not redone), then the teacher's targets."""
    stages = plan(recipe.teacher, source, teacher)
    for stage in stages:
        stage.role, stage.home = "teacher ", teacher
    model = final_model(recipe.teacher, teacher)
    stages.append(Stage("teacher targets", "distill", ["--teacher", str(model), "--cache", str(teacher.cache),
                                                       "--out", str(layout.targets.parent), "--device", recipe.device],
                        output=layout.targets, inputs=[model]))
    return stages


def student_options(recipe: recipes.Recipe, layout: Layout, teacher: Layout, options: dict) -> dict:
    """A student branch's (or head's) options: the teacher's targets and weight, and its
    ``init = "teacher:NAME"`` as that branch's checkpoint in the teacher's run."""
    init = str(options.get("init", ""))
    if init.startswith(recipes.TEACHER_INIT):
        options = {**options, "init": str(teacher.out / "branches" / init[len(recipes.TEACHER_INIT):] / "best.pt")}
    return {**options, "teacher": str(layout.targets),
            "distill-weight": recipe.distill.get("distill-weight", 0.5)}


def plan(recipe: recipes.Recipe, source: str, layout: Layout, teacher_out: Path | None = None) -> list[Stage]:
    """The recipe's stages in the order they run; a student's (a [distill] table) after its
    teacher's, whose run is ``teacher_out`` (default OUT/teacher)."""
    seed, device = ["--seed", str(recipe.seed)], ["--device", recipe.device]
    if recipe.distill:
        teacher = Layout(Path(teacher_out) if teacher_out else layout.out / "teacher")
        stages = teacher_plan(recipe, source, layout, teacher)
        layout.shared_cache = teacher.cache
        student = lambda options: student_options(recipe, layout, teacher, options)
    else:
        stages = [Stage("regions", "regions", [source, "--cache", str(layout.cache), *seed,
                                                *recipes.stage_argv("regions", recipe.regions)])]
        student = lambda options: options

    def branch(name: str, run: Path, options: dict) -> Stage:
        return Stage(f"branch {run.name}", "branch",
                     ["--cache", str(layout.cache), "--out", str(run), *seed, *device,
                      *recipes.stage_argv("branch", recipes.with_crop(name, student(options)))],
                     resume_from=run / "last.pt")

    skipped = cross_fitted(recipe)
    stages += [branch(name, layout.branch(name), options) for name, options in recipe.branches.items()
               if name not in skipped]
    folds, out_of_fold, fold_files = recipe.out_of_fold.get("folds"), [], []
    for name in recipe.out_of_fold.get("regions", []):
        runs = [layout.fold(name, i, folds) for i in range(1, folds + 1)]
        stages += [branch(name, run, recipes.fold_options(recipe.branches[name], i, folds))
                   for i, run in enumerate(runs, start=1)]
        fold_files += [run / "best.pt" for run in runs]
        out_of_fold += ["--out-of-fold", f"{name}=" + ",".join(str(run / "best.pt") for run in runs)]

    checkpoints = {name: None if name in skipped else layout.branch(name) / "best.pt" for name in recipe.branches}
    spec = ",".join(name if path is None else f"{name}={path}" for name, path in checkpoints.items())
    stages.append(Stage("fusion", "fusion", ["--cache", str(layout.cache), "--branches", spec,
                                             "--out", str(layout.fused.parent), *seed, *device,
                                             *recipes.stage_argv("fusion", student(recipe.fusion)), *out_of_fold],
                        output=layout.fused, inputs=[p for p in checkpoints.values() if p] + fold_files
                        + ([layout.targets] if recipe.distill else [])))
    model = layout.fused
    if recipe.joint and recipe.distill:
        raise ValueError(f"{recipe.path}: a student has no [joint] stage (it would fine-tune without its teacher)")
    if recipe.joint:
        stages.append(Stage("joint", "joint", ["--cache", str(layout.cache), "--fused", str(layout.fused),
                                               "--out", str(layout.joint.parent), *seed, *device,
                                               *recipes.stage_argv("joint", recipe.joint)],
                            output=layout.joint, inputs=[layout.fused], resume_from=layout.joint.parent / "last.pt"))
        model = layout.joint
    stages.append(evaluate_stage("evaluation", model, layout, layout.evaluation))
    return stages


def git_commit() -> str | None:
    """The commit of the code that runs (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message names it, its log and the log's last lines."""


def run_stage(stage: Stage, layout: Layout) -> bool:
    """Runs ``stage`` unless the stamps of the stages already run (``OUT/stages.json``) say
    its output is current; True when it ran. A failure raises ``StageFailed``."""
    layout = stage.home or layout
    done = json.loads(layout.stamps.read_text()) if layout.stamps.is_file() else {}
    if stage.output is not None and stage.output.is_file() and done.get(stage.name) == stage.stamp():
        return False
    if stage.name in done and stage.resume_from is not None and stage.resume_from.is_file():
        stage.resume_from.unlink()  # it finished once from other inputs: its checkpoint is not this run's start
    log = layout.log(stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    # the run's own Python: the stage runs the same agefuse as this command
    with open(log, "w") as handle:
        code = subprocess.run([sys.executable, "-m", COMMANDS[stage.command][1], *stage.full_argv()],
                              stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        raise StageFailed(f"stage {stage.name} failed (exit {code}), see {log}:\n" + "\n".join(tail))
    if stage.output is not None:
        done[stage.name] = stage.stamp()
        with atomic_write(layout.stamps) as tmp:  # a kill mid-write must not lose the other stages' stamps
            tmp.write_text(json.dumps(done, indent=1))
    return True


def run_recipe(recipe: recipes.Recipe, source: str, out: Path, echo=print, teacher_out: Path | None = None) -> dict:
    """Every stage of ``recipe`` into ``out`` (resuming what a previous run left): the run's
    summary, also written to ``OUT/train.json``. A student's teacher runs in ``teacher_out``."""
    layout = Layout(Path(out))
    layout.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.path, layout.out / "recipe.toml")
    stages = plan(recipe, source, layout, teacher_out)
    echo(f"recipe {recipe.path} ({recipe.name}), seed {recipe.seed}, commit {git_commit()}, source {source}, "
         f"{len(stages)} stages")
    timings, started = {}, time.perf_counter()
    for number, stage in enumerate(stages, start=1):
        echo(f"[{number}/{len(stages)}] {stage.title}: {stage.shown()}")
        tick = time.perf_counter()
        ran = run_stage(stage, layout)
        timings[stage.title] = time.perf_counter() - tick
        echo(f"[{number}/{len(stages)}] {stage.title}: "
             + (f"done in {timings[stage.title] / 60:.1f} min" if ran else "up to date, skipped"))
    timings["all stages"] = time.perf_counter() - started
    model = final_model(recipe, layout)
    evaluation = json.loads((layout.evaluation / "evaluation.json").read_text())["results"]
    summary = {"recipe": recipe.to_json(), "seed": recipe.seed, "commit": git_commit(), "source": str(source),
               "model": str(model), "timings_s": timings, "evaluation": str(layout.evaluation / "evaluation.md"),
               "fused": {key: evaluation["fused"][key] for key in ("mae", "cs5", "interval_coverage")}
               | {"gender_accuracy": evaluation["fused"]["gender"]["accuracy"]}}
    (layout.out / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run every stage of a training recipe, from photos to an evaluated "
                                                 "fused model (resumable).", add_help=add_help,
                                     formatter_class=HelpFormatter)
    parser.add_argument("recipe", type=existing_file, help="a recipe file, e.g. recipes/cpu-budget.toml")
    parser.add_argument("--source", required=True,
                        help="the labelled photos (a folder, as agefuse-regions takes it), e.g. ../shared/utkface")
    parser.add_argument("--out", required=True, type=output_folder,
                        help="the run's folder: cache, branches, fused model, evaluation, logs; an existing one is "
                             "resumed")
    parser.add_argument("--teacher-out", default=None, type=output_folder,
                        help="a student recipe's (a [distill] table's) teacher run: made there, or resumed where an "
                             "earlier agefuse-train of the teacher's recipe left it (default: OUT/teacher)")
    parser.add_argument("--seed", type=int, default=None, help="instead of the recipe's seed")
    parser.add_argument("--dry-run", action="store_true", help="print the stages' command lines, run nothing")
    return parser


def main(args: argparse.Namespace) -> int:
    recipe = recipes.load(args.recipe)
    if args.seed is not None:
        recipe.seed = args.seed
    if not Path(args.source).is_dir():
        raise ValueError(f"{args.source}: not a folder of photos")
    if args.dry_run:
        for number, stage in enumerate(plan(recipe, args.source, Layout(Path(args.out)), args.teacher_out), start=1):
            print(f"[{number}] {stage.title}: {stage.shown()}")
        return 0
    if recipe.device.startswith("cuda"):
        import torch  # only here: the dry run and the option checks need no torch
        if not torch.cuda.is_available():
            raise ValueError(f"{recipe.path}: the {recipe.name} recipe needs a CUDA GPU and this machine has none; "
                             f"nothing was run (recipes/cpu-budget.toml runs on a CPU)")
    summary = run_recipe(recipe, args.source, Path(args.out), echo=lambda line: print(line, flush=True),
                         teacher_out=args.teacher_out)
    fused = summary["fused"]
    print(f"model {summary['model']}: validation MAE {fused['mae']:.2f}, CS@5 {100 * fused['cs5']:.1f}%, "
          f"gender {100 * fused['gender_accuracy']:.1f}%, 80% interval holds {100 * fused['interval_coverage']:.1f}%; "
          f"all stages {summary['timings_s']['all stages'] / 60:.1f} min; tables: {summary['evaluation']}")
    return 0


def run() -> int:
    return run_command(get_args_parser, main, errors=(StageFailed,))


if __name__ == "__main__":
    sys.exit(run())
