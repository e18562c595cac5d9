"""agefuse-serve under load on this machine (loopback only), next to predict's own time.

    python bench/serve_load.py [--model fused.pt] [--clients 4,16] [--requests 200] [--seconds 60]

Starts ``agefuse-serve`` on a free loopback port, then for each client count sends the
photos of ``bench/predict_latency.py`` (a 1-face and a 4-face photo, alternating) from that
many threads at once, each waiting for its answer before sending the next, until
``--requests`` answers or ``--seconds`` have passed (bounded in count and time). Reports
requests/s and the latency's median and 95th percentile, and, for comparison, the time of
the same photos through ``predict_faces`` in one process (what agefuse-predict spends per
photo, without HTTP). Every answer is checked: status 200 and the photo's face count.
"""
import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from common import bench_photos, command, photo_options, ready_model

from agefuse.fusion import predict_faces


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model: str | None = None, threads: int = 2):
    """``agefuse-serve`` on a free loopback port, ready (its /health answers); yields its URL."""
    port = free_port()
    argv = [command("agefuse-serve"), "--port", str(port), "--threads", str(threads)]
    server = subprocess.Popen(argv + (["--model", model] if model else []), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def post(url: str, data: bytes) -> tuple[int, int]:
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, len(json.loads(response.read())["faces"])


def load(url: str, photos: list[tuple[bytes, int]], clients: int, requests: int, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    latencies, wrong = [], 0
    counter = iter(range(10**9))

    def client(_):
        nonlocal wrong
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= requests:
                return
            data, faces = photos[i % len(photos)]
            start = time.perf_counter()
            status, found = post(url, data)
            latencies.append(time.perf_counter() - start)
            wrong += status != 200 or found != faces
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    ms = 1000 * np.array(latencies)
    return {"clients": clients, "answers": len(ms), "wrong": wrong, "per_s": len(ms) / elapsed,
            "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}


def main(args) -> int:
    photos = [(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), n)
              for image, n in zip(bench_photos(args.source).values(), (1, 4))]

    model, pool, settings = ready_model(args.model, args.threads)
    direct = []
    for _ in range(3):
        for data, _n in photos:
            predict_faces(model, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), settings, pool,
                          args.threads)
    for _ in range(args.direct_repeats):
        for data, _n in photos:
            start = time.perf_counter()
            predict_faces(model, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), settings, pool,
                          args.threads)
            direct.append(time.perf_counter() - start)
    del model, pool

    with serving(args.model, args.threads) as url:
        post(url + "/predict", photos[0][0])  # warm-up
        rows = [load(url + "/predict", photos, c, args.requests, args.seconds) for c in args.clients]
    ms = 1000 * np.array(direct)
    print(f"photos: a 1-face 320x320 and a 4-face 480x480 JPEG, alternating; {args.threads} threads; "
          f"{os.cpu_count()} CPUs; loopback")
    print("| client(s) | answers | wrong | requests/s | median ms | p95 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['answers']} | {r['wrong']} | {r['per_s']:.1f} | {r['median_ms']:.0f} | "
              f"{r['p95_ms']:.0f} |")
    print(f"| predict_faces in one process (no HTTP), one at a time | {len(ms)} | | {1000 / ms.mean():.1f} | "
          f"{np.median(ms):.0f} | {np.percentile(ms, 95):.0f} |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    photo_options(parser)
    parser.add_argument("--clients", type=lambda t: [int(x) for x in t.split(",")], default=[4, 16])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--direct-repeats", type=int, default=20)
    sys.exit(main(parser.parse_args()))
