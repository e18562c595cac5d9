"""Draw the bundled sample: ~28 UTKFace images per default age group (seeded), copied to
sample/utkface/. Run once; its output is committed, the rest of the data set is not.

    python tools/make_sample.py ../shared/utkface sample/utkface --per-group 28 --seed 0
"""
import argparse
import random
import shutil
from pathlib import Path

from agefuse.regions import labels, manifest


def main(args):
    items, problems = labels.utkface_items(args.source)
    groups = manifest.parse_age_groups()
    by_group = {}
    for item in items:
        by_group.setdefault(manifest.age_group(item.age, groups), []).append(item)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for group in groups:
        chosen = rng.sample(by_group[group.label], min(args.per_group, len(by_group[group.label])))
        for item in chosen:
            shutil.copy2(item.path, out / Path(item.path).name)
        print(f"{group.label:>6}: {len(chosen)} of {len(by_group[group.label])}")
    print(f"{len(problems)} files skipped for their names (not sampled)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--per-group", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
