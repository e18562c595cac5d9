"""The fused model's four branches at batch 1 on this CPU, each way agefuse can run them.

    python bench/branch_latency.py [--model fusion/default/fused-utkface.pt] [--compile]

Per branch alone (one torch thread), then all four per face: one after another, and side
by side on two threads as agefuse-predict runs them. Ways: ``plain`` (the modules as
trained), ``folded`` (norms folded into the convs, as load_fused gives them), ``traced``
(folded, then traced and frozen by TorchScript: FusedModel.trace), and with
``--compile`` torch.compile (timed apart: its compile time is printed too).
"""
import argparse
import copy
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from common import mean_ms

from agefuse.branches import fold_norms
from agefuse.fusion import DEFAULT_MODEL, load_fused


def main(args):
    torch.set_num_threads(1)
    plain, _ = load_fused(args.model, fold=False)
    folded = fold_norms(copy.deepcopy(plain))
    traced = copy.deepcopy(folded).trace()
    ways = {"plain": list(plain.branches), "folded": list(folded.branches), "traced": list(traced.branches)}
    if args.compile:
        start = time.perf_counter()
        ways["compiled"] = [torch.compile(b) for b in folded.branches]
    inputs = [torch.randint(0, 255, (2 if region == "eyes" else 1, 3, size, size), dtype=torch.uint8)
              for region, size in zip(plain.regions, plain.image_sizes)]
    pool = ThreadPoolExecutor(2)
    print(f"model {args.model or DEFAULT_MODEL}, batch 1 (eyes: its two views), ms, mean of {args.repeats} calls "
          "after 3 warm-up calls")
    print("| way | " + " | ".join(f"{r} {s}px" for r, s in zip(plain.regions, plain.image_sizes))
          + " | four one after another | four side by side (2 threads) |")
    print("|---|" + "---|" * (len(inputs) + 2))
    with torch.inference_mode():
        for way, branches in ways.items():
            if way == "compiled":
                for branch, x in zip(branches, inputs):
                    branch(x)
                print(f"(torch.compile: {time.perf_counter() - start:.1f} s to compile the four)")
            alone = [mean_ms(lambda b=b, x=x: b(x), args.repeats) for b, x in zip(branches, inputs)]
            serial = mean_ms(lambda: [b(x) for b, x in zip(branches, inputs)], args.repeats)
            parallel = mean_ms(lambda: list(pool.map(lambda bx: bx[0](bx[1]), zip(branches, inputs))), args.repeats)
            print(f"| {way} | " + " | ".join(f"{t:.2f}" for t in alone) + f" | {serial:.2f} | {parallel:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="fused.pt (default: the installed model)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile (about a minute to compile the four here)")
    main(parser.parse_args())
