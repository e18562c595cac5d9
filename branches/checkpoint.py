"""Branch checkpoints: one dict, saved through a rename, loaded with ``weights_only=True``.

Keys: ``model``, ``optimizer``, ``sampler``, ``stop``, ``round``, ``history``, ``rng``,
``model_args`` (what ``create_model`` needs, plus the region and image size) and ``config``
(every command-line option). ``load_branch`` rebuilds a trained branch from the file alone.

A round's files are written by ``save_round`` (``last.pt``, then ``best.pt``, then
``history.json``); ``repair_run`` on ``--resume`` makes them agree again after a kill at any
point between or during those writes.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from agefuse.cli import json_text
from agefuse.files import atomic_write

from .model import MODEL_ARG_DEFAULTS, BranchModel, current_model_args, model_from_args

MODEL_ARG_NAMES = ("region", "model", "max_age", "embedding_dim", "image_size", "feature_scale", "fold")


class CheckpointError(ValueError):
    pass


def model_args_of(args) -> dict:
    return {name: getattr(args, name) for name in MODEL_ARG_NAMES}


def save_checkpoint(state: dict, path: Path) -> None:
    remove_temporaries(Path(path).parent, Path(path).name)  # a killed save's, which no rename will take
    with atomic_write(path) as tmp:  # a kill during the save leaves the previous checkpoint whole
        torch.save(state, tmp)


def remove_temporaries(folder: Path, name: str = "") -> list[Path]:
    """The temporary files (``atomic_write``'s ``.NAME.tmp-PID``) a killed write left in a
    run folder, of ``name`` alone when given; one process writes a run, so none is in use."""
    stale = [p for p in Path(folder).glob(f".{name or '*'}.tmp-*") if p.name != f".{name}.tmp-{os.getpid()}"]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_round(state: dict, out: Path, improved: bool) -> None:
    """One round's checkpoints and history. ``last.pt`` first: after a kill before ``best.pt``
    is written, ``last.pt`` still holds the best round's weights, from which ``repair_run``
    rewrites it (the other order could overwrite the best round with a worse one)."""
    save_checkpoint(state, out / "last.pt")
    if improved:
        save_checkpoint(state, out / "best.pt")
    with atomic_write(out / "history.json") as tmp:
        tmp.write_text(json_text(state["history"]))


def saved_round(path: Path) -> int | None:
    """The round a checkpoint holds; None when it is missing or unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["round"])
    except Exception:  # noqa: BLE001 (missing, cut short or foreign: in each case not the round wanted)
        return None


def repair_run(out: Path, state: dict, say: Callable[[str], None]) -> None:
    """A run folder as ``state`` (its ``last.pt``) says it should be, after a kill at any point
    of ``save_round``: the temporary files go, ``best.pt`` holds the best round (rewritten from
    ``last.pt`` when that round is the last one), ``history.json`` holds every round."""
    for path in remove_temporaries(out):
        say(f"{path}: removed (a write that was killed before it finished)")
    best_round, best = state["stop"]["best_round"], out / "best.pt"
    held = saved_round(best)
    if held != best_round:
        if best_round != state["round"]:  # only the last round's weights are in last.pt
            raise CheckpointError(f"{best} holds round {held}, but {out / 'last.pt'} says round {best_round} was the "
                                  f"best and no file holds its weights; train again without --resume")
        save_checkpoint(state, best)
        say(f"{best}: held {'no round' if held is None else f'round {held}'}, but round {best_round} was the best "
            f"(a kill before it was written): rewritten from {out / 'last.pt'}")
    history = out / "history.json"
    if not history.is_file() or history.read_text() != json_text(state["history"]):
        with atomic_write(history) as tmp:
            tmp.write_text(json_text(state["history"]))
        say(f"{history}: rewritten from {out / 'last.pt'} (rounds 0-{state['round']})")


def read_torch_file(path: str | Path, what: str = "agefuse checkpoint"):
    """The contents of a torch file a user handed us, read with ``weights_only=True`` so
    nothing in it runs; a file that is not one (random bytes, a pickle with code in it) is a
    ``CheckpointError`` of one line naming it, not torch's traceback."""
    try:
        with warnings.catch_warnings():
            # torch warns about a foreign pickle's protocol before refusing it: the refusal
            # below is the one line the user needs
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        text = str(err).strip()
        reason = foreign_file(Path(path))  # first: torch's message for any file mentions weights_only
        if reason is None and ("weights_only" in text or "Unsupported global" in text):
            reason = "it holds Python objects other than tensors, which are never loaded"
        reason = reason or shortened(text.splitlines()[0] if text else type(err).__name__)
        raise CheckpointError(f"{path}: not a readable {what} ({reason})") from None


def foreign_file(path: Path) -> str | None:
    """Why a file torch refused is not a torch.save file, when its first bytes tell (torch's
    own words for these are its internals': an error number, a zip reader's complaint). Only
    the first local header is read: torch.save writes ``<name>/data.pkl`` first."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(30 + 256)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":
        name_length = int.from_bytes(head[26:28], "little")
        if not head[30:30 + name_length].endswith(b"data.pkl"):
            return "a zip archive, but not one torch.save writes (a torch.export .pt2 is one such)"
        return None
    if head[:1] == b"\x80" or not head:  # a binary pickle (torch's legacy format), or nothing: torch's reason
        return None
    return "not a file torch.save writes (its zip archive or a binary pickle)"


def shortened(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def load_checkpoint(path: str | Path, expected_model_args: dict | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    state = read_torch_file(path)
    if not isinstance(state, dict) or "model_args" not in state:
        raise CheckpointError(f"{path}: not an agefuse branch checkpoint (no model_args)")
    try:  # today's arguments: a file from before one was added, or after one was removed, still reads
        state["model_args"] = current_model_args(state["model_args"], path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if expected_model_args is not None:
        # both sides filled from the defaults, so a key added since either was written is no difference
        expected = {**MODEL_ARG_DEFAULTS, **expected_model_args}
        saved = state["model_args"]
        differ = [f"{k} is {saved.get(k)!r} there, {v!r} here" for k, v in expected.items() if saved.get(k) != v]
        differ += [f"{k} is {v!r} there, not set here" for k, v in saved.items() if k not in expected]
        if differ:
            raise CheckpointError(f"{path} is from another model: " + ", ".join(differ))
    return state


def load_branch(path: str | Path, device: str | torch.device = "cpu") -> tuple[BranchModel, dict]:
    """A trained branch in eval mode, and its ``model_args``, from a checkpoint alone."""
    state = load_checkpoint(path)
    args = state["model_args"]
    model = model_from_args(args)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), args
