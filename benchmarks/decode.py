"""Decoder speed on one CPU core: ``python -m benchmarks.decode [--upsample 1 4] [--input 288x384]
[--device cuda]``.

Scenes of 1, 5, 20 and 50 random upright people are encoded into ideal stride-8 maps, then decoded (peaks with
the configured upsampling, limb scoring, grouping) with ``torch.set_num_threads(1)`` and one numba thread.
Prints the median and 90th percentile ms per image, and how many people came back, with the hardware.

``--device cuda`` puts the maps on the GPU first, as the predictor hands them over from a CUDA backend, and times
the way the decoder takes with them: upsampled maps are searched with torch on the device (only the peaks and the
PAFs cross to the host), stride-8 maps (``--upsample 1``, the default decode) are copied to the host in one piece
and searched with OpenCV, inside the timed call.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numba
import numpy as np
import torch

from posekit.codec import Decoder, encode
from posekit.config import DecodeConfig
from posekit.runtime.host import cpu_name
from posekit.skeleton import Skeleton

# An upright person in COCO-17 order, (x, y) in units of its height, centred; perturbed per person.
TEMPLATE = np.array(
    [[0, -0.47], [0.02, -0.5], [-0.02, -0.5], [0.05, -0.48], [-0.05, -0.48], [0.1, -0.37], [-0.1, -0.37],
     [0.13, -0.18], [-0.13, -0.18], [0.15, -0.02], [-0.15, -0.02], [0.06, 0.0], [-0.06, 0.0], [0.07, 0.26],
     [-0.07, 0.26], [0.07, 0.5], [-0.07, 0.5]], np.float32)  # fmt: skip


def random_people(skeleton: Skeleton, n: int, input_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(n, J, 3) people in network order, all joints labeled, scattered over the input (they may overlap).
    Heights shrink with n so that crowds fit, as in real crowded photos."""
    H, W = input_hw
    h_max = H * min(0.8, 1.6 / np.sqrt(n))
    heights = rng.uniform(0.5 * h_max, h_max, n)
    out = []
    for h in heights:
        jitter = rng.normal(0, 0.03, TEMPLATE.shape)
        mirror = rng.choice([-1.0, 1.0])  # facing the camera or away
        xy = (TEMPLATE * [mirror, 1] + jitter) * h
        xy += [rng.uniform(0.3 * h, W - 0.3 * h), rng.uniform(0.5 * h, H - 0.5 * h)]
        out.append(np.concatenate([xy, np.full((len(xy), 1), 2.0)], axis=1))
    return skeleton.to_network(np.stack(out))


def hardware(device: str = "host") -> str:
    model = cpu_name()
    gpu = f", maps on {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else ""
    return (f"{model} ({os.cpu_count()} logical cores; timed on 1 thread){gpu}, torch {torch.__version__}, "
            f"numba {numba.__version__}")


def bench(upsample: int, people: int, input_hw: tuple[int, int], scenes: int, repeats: int,
          skeleton: Skeleton, seed: int = 0, device: str = "host") -> dict:
    """One row: ``scenes`` scenes of ``people`` people, each decoded ``repeats`` times. ``device``: "host" hands
    the decoder numpy arrays; a torch device name ("cpu", "cuda") hands it tensors on that device."""
    rng = np.random.default_rng(seed)
    decoder = Decoder(skeleton, dataclasses.replace(DecodeConfig(), upsample=upsample, max_people=max(20, people)))
    maps = [encode(random_people(skeleton, people, input_hw, rng), skeleton, (input_hw[0] // 8, input_hw[1] // 8))
            for _ in range(scenes)]
    if device != "host":
        maps = [(torch.from_numpy(h).to(device), torch.from_numpy(p).to(device)) for h, p in maps]
    decoder(*maps[0])  # compile / warm up
    times, found = [], []
    for _ in range(repeats):
        for heat, paf in maps:
            t = time.perf_counter()
            result = decoder(heat, paf)
            times.append((time.perf_counter() - t) * 1e3)
            found.append(len(result))
    return {"upsample": upsample, "people": people, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "decoded": float(np.mean(found))}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="288x384", help="network input HxW (default 288x384)")
    ap.add_argument("--upsample", type=int, nargs="+", default=[1, 4], help="codec.decode.upsample values")
    ap.add_argument("--people", type=int, nargs="+", default=[1, 5, 20, 50])
    ap.add_argument("--scenes", type=int, default=20, help="different scenes per row")
    ap.add_argument("--repeats", type=int, default=5, help="passes over the scenes")
    ap.add_argument("--device", default="host",
                    help="where the maps are: host (numpy, the default) or a torch device such as cuda")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    input_hw = tuple(int(v) for v in args.input.lower().split("x"))
    skeleton = Skeleton.default()
    print(f"decode benchmark: {hardware(args.device)}")
    print(f"input {input_hw[0]}x{input_hw[1]} (maps {input_hw[0] // 8}x{input_hw[1] // 8}), skeleton {skeleton.name}, "
          f"{args.scenes} scenes x {args.repeats} passes per row\n")
    print("| upsample | people | decoded | median ms | p90 ms |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    for u in args.upsample:
        for n in args.people:
            r = bench(u, n, input_hw, args.scenes, args.repeats, skeleton, device=args.device)
            rows.append(r)
            print(f"| {u} | {n} | {r['decoded']:.1f} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
