"""Training images/s per model and image size on this machine's CPU (or CUDA when asked),
and what the augmentation costs next to a training step.

    python bench/train_speed.py --cache runs/utk [--models small_cnn,efficientnet_lite0,resnet18]
        [--sizes 48,64,96] [--device cpu]

Forward + backward + AdamW step on batches of real face crops (already decoded, so the
figure is the network's); then the per-image cost of each declared augmentation step and of
the whole pipeline at each size, and the loader's own images/s with the pipeline on.
"""
import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agefuse.branches import RegionDataset, augmentation, branch_loss, create_model


def step_speed(name, size, images, ages, genders, device, steps):
    model = create_model(name, pretrained=False).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.nn.functional.interpolate(images[:64].float(), size=size).to(device)
    for _ in range(2):  # warm-up
        loss, _ = branch_loss(model(batch), ages[:64].to(device), genders[:64].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        loss, _ = branch_loss(model(batch), ages[:64].to(device), genders[:64].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def augment_cost(region, size, images, repeats=200):
    """ms per image of each declared step (p forced to 1) and of the pipeline as declared."""
    crops = [np.ascontiguousarray(images[i % len(images)].numpy().transpose(1, 2, 0)) for i in range(repeats)]
    costs = {}
    pipeline = augmentation(region, "default", seed=0)
    for step in pipeline.transforms:
        transform = copy.deepcopy(step)
        transform.p = 1.0
        start = time.perf_counter()
        for crop in crops:
            transform(image=crop)
        costs[type(step).__name__] = 1000 * (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for crop in crops:
        pipeline(image=crop)
    costs["pipeline as declared"] = 1000 * (time.perf_counter() - start) / repeats
    with tempfile.TemporaryDirectory() as folder:  # a step the default does not declare: a file of its own
        config = Path(folder) / "nlmeans.json"
        config.write_text(json.dumps({region: [{"Denoise": {"method": "nlmeans", "p": 1.0}}]}))
        slow = augmentation(region, str(config), seed=0)
    start = time.perf_counter()
    for crop in crops[:50]:
        slow(image=crop)
    costs["Denoise nlmeans (not used)"] = 1000 * (time.perf_counter() - start) / 50
    return costs


def main(args):
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    data = RegionDataset(args.cache, "face", "train", max(map(int, args.sizes.split(","))))
    picks = np.random.default_rng(0).choice(len(data), 256, replace=False)
    items = [data[int(i)] for i in picks]
    images = torch.stack([it[0] for it in items])
    ages = torch.tensor([it[1] for it in items])
    genders = torch.tensor([it[2] for it in items])
    print(f"training speed, {device}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, batch 64")
    print(f"{'model':>20} {'size':>5} {'images/s':>9}")
    for name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            print(f"{name:>20} {size:>5} {step_speed(name, size, images, ages, genders, device, args.steps):9.1f}",
                  flush=True)
    for size in map(int, args.sizes.split(",")):
        small = torch.nn.functional.interpolate(images.float(), size=size).round().clamp(0, 255).byte()
        costs = augment_cost("face", size, small)
        print(f"\naugmentation cost per {size}-px face crop (ms, each step at p=1):")
        for name, ms in costs.items():
            print(f"  {name:>28}: {ms:6.3f}")
    for workers in (0, 1):
        loader_set = RegionDataset(args.cache, "face", "train", 64, augmentation("face", "default", seed=0))
        loader = torch.utils.data.DataLoader(loader_set, batch_size=64, num_workers=workers,
                                             sampler=range(0, 64 * 20))
        start = time.perf_counter()
        for _ in loader:
            pass
        print(f"loader alone, 64 px, decode + augment + resize, {workers} worker(s): "
              f"{64 * 20 / (time.perf_counter() - start):.0f} images/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--models", default="small_cnn,dlib_age_resnet,dlib_gender_cnn",
                        help="backbones of the BACKBONES registry, comma-separated")
    parser.add_argument("--sizes", default="48,64,96")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    main(parser.parse_args())
