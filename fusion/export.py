"""agefuse-export: the fused model (branches + head) as one ``torch.export`` file (.pt2), or
as one ONNX file (``--format onnx``, see ``agefuse.fusion.onnx``).

    agefuse-export --model runs/fused/fused.pt --out runs/fused/fused.pt2
    agefuse-export --model runs/fused/fused.pt --format onnx --out runs/fused/fused.onnx

The exported program needs torch alone, no agefuse code: ``torch.export.load(path).module()``
and call it with ``(views, present)``, where ``views[i]`` is the (N, V, 3, S, S) uint8 RGB crops of
branch i (regions and sizes in the file's ``meta.json`` extra file) and ``present`` the
(N, R) bool flags. It returns (N, 4 + R): age, interval low, interval high, P(female), then
each branch's own age; any number of faces. The command checks the file against the
original on random inputs. (TorchScript is deprecated in this torch; torch.export replaces it.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from agefuse.cli import HelpFormatter, existing_file, run_command

from .exported import example_inputs, export, load_exported
from .model import load_fused


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export the fused model with torch.export (.pt2).", add_help=add_help,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, type=existing_file, help="fused.pt from agefuse-train-fusion")
    parser.add_argument("--out", required=True, help="the file to write (.pt2 or .onnx)")
    parser.add_argument("--format", choices=["pt2", "onnx"], default="pt2",
                        help="pt2: a torch.export program (torch alone runs it); onnx: one ONNX file with "
                             "the crop sizes and the interval in its metadata (ONNX Runtime runs it)")
    return parser


def main(args: argparse.Namespace) -> int:
    model, _ = load_fused(args.model)
    views, present = example_inputs(model, count=5, seed=1)
    with torch.no_grad():
        expected = model(views, present)
    if args.format == "onnx":
        from .onnx import OnnxModel, export_onnx
        path = export_onnx(model, Path(args.out))
        out = OnnxModel(path).outputs(views, present)
        got = torch.cat([out[name][:, None] for name in model.COLUMNS] + [out["branch_ages"]], 1)
        what = "ONNX model (ONNX Runtime)"
    else:
        path = export(model, Path(args.out))
        with torch.no_grad():
            got = load_exported(path)(views, present)
        what = "exported program (torch.export)"
    whole = [model.COLUMNS.index(name) for name in model.WHOLE_YEARS]
    continuous = [i for i in range(got.shape[1]) if i not in whole]
    difference = (got[:, continuous] - expected[:, continuous]).abs().max().item()
    flips = int((got[:, whole] != expected[:, whole]).sum())
    print(f"{path}: {what} of {', '.join(model.regions)} + head; max difference from the original on "
          f"5 random faces: {difference:.2e} (age, gender, branch ages); interval ends that differ: {flips}")
    return 0 if difference <= 1e-4 and flips <= 1 and (got[:, whole] - expected[:, whole]).abs().max() <= 1 else 1


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
