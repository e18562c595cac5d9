"""agefuse-predict's latency per photo, PyTorch against ONNX Runtime, on the same photos.

    python bench/onnx_latency.py --model fusion/default/fused-utkface.pt [--rounds 5] [--repeats 20]

Exports the model to ONNX first (``agefuse-export --format onnx``), then times, in
interleaved rounds (the machine's speed swings from minute to minute, so each round times
both engines back to back), the photos of ``bench/predict_latency.py``: one face in a
320x320 photo, four in a 480x480 one. Each figure is the median over the rounds of each
round's median of ``--repeats`` calls; detection, landmarks and crops included, as predict
does them. PyTorch runs as predict does: branches traced, side by side on the threads.
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import bench_photos, command, photo_options, predict_ms, ready_model

from agefuse.fusion import OnnxModel


def main(args) -> int:
    onnx_path = Path(tempfile.mkdtemp()) / "fused.onnx"
    subprocess.run([command("agefuse-export"), "--format", "onnx", "--model", args.model, "--out", str(onnx_path)],
                   check=True, capture_output=True)
    model, pool, _ = ready_model(args.model, args.threads)
    engines = {"PyTorch (traced, side by side)": (model, pool),
               "ONNX Runtime": (OnnxModel(onnx_path, args.threads), None)}
    photos = bench_photos(args.source)
    times = {(p, e): [] for p in photos for e in engines}
    for round_index in range(args.rounds):
        for photo_name, image in photos.items():
            for engine, (runner, pool) in engines.items():
                if round_index == 0:
                    predict_ms(runner, image, 0, 3, pool, args.threads)  # warm-up
                _, detect_ms, network_ms = predict_ms(runner, image, 0, args.repeats, pool, args.threads)
                times[photo_name, engine].append((detect_ms + network_ms, network_ms))
    print(f"{args.rounds} interleaved rounds, median of {args.repeats} calls each; {args.threads} threads; "
          f"ms per photo (of which branches + head)")
    print("| photo | " + " | ".join(engines) + " | ONNX / PyTorch |")
    print("|---|" + "---|" * (len(engines) + 1))
    for photo_name in photos:
        cells, totals = [], []
        for engine in engines:
            total, network = np.median(np.array(times[photo_name, engine]), axis=0)
            spread = [t for t, _ in times[photo_name, engine]]
            cells.append(f"{total:.1f} ({network:.1f}); rounds {min(spread):.1f}-{max(spread):.1f}")
            totals.append(total)
        print(f"| {photo_name} | " + " | ".join(cells) + f" | {totals[1] / totals[0]:.2f} |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    photo_options(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    sys.exit(main(parser.parse_args()))
