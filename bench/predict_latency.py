"""agefuse-predict latency per face on this CPU: detection + landmarks + crops + every branch
+ fusion, for a photo with one face and a photo with four (only the crops the model reads, as
agefuse-predict cuts them).

    python bench/predict_latency.py --model runs/fused/fused.pt [--upsample 0] [--repeats 30]

The photos are built from UTKFace faces (200-px chips on a plain background; one face in a
320x320 photo, four in a 2x2 grid of 480x480). Warm-up calls come first (model loading is
not latency). Prints milliseconds per photo and per face, split into the face pipeline
(detection, landmarks, crops) and the networks (branches + head).
"""
import argparse

import torch
from common import bench_photos, branch_sizes, photo_options, predict_ms

from agefuse.fusion import branch_pool, load_fused


def main(args):
    model, state = load_fused(args.model)
    if not args.eager:
        model.trace()
    pool = branch_pool(model, args.threads) if args.side_by_side else None
    if not args.side_by_side:
        torch.set_num_threads(args.threads)
    detect_threads = 1 if args.plain_detector else args.threads
    photos = list(zip(bench_photos(args.source).items(), (1, 4)))  # (name, photo), faces in it
    print(f"model {args.model}: branches {branch_sizes(model)}; "
          f"{torch.get_num_threads()} torch threads, branches "
          f"{'side by side on ' + str(pool._max_workers) + ' threads' if pool else 'one after another'}, "
          f"{'eager' if args.eager else 'traced'} branches, HOG upsample {args.upsample} "
          f"on {detect_threads} thread(s), median of {args.repeats}")
    for (name, image), expected in photos:
        predict_ms(model, image, args.upsample, 3, pool, detect_threads)  # warm-up: lazy model loads, allocator
        found, pipeline_ms, network_ms = predict_ms(model, image, args.upsample, args.repeats, pool, detect_threads)
        total = pipeline_ms + network_ms
        print(f"{name}: {found} of {expected} faces found; {total:.1f} ms per photo = "
              f"{pipeline_ms:.1f} detection+crops + {network_ms:.1f} branches+fusion; "
              f"{total / max(found, 1):.1f} ms per face")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    photo_options(parser)
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--one-after-another", dest="side_by_side", action="store_false",
                        help="run the branches in turn, each on all threads (the old way)")
    parser.add_argument("--eager", action="store_true", help="branches as plain PyTorch modules, not traced")
    parser.add_argument("--plain-detector", action="store_true",
                        help="dlib's detector on one thread, as before the shared pyramid")
    main(parser.parse_args())
