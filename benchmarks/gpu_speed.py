"""GPU speed of BpNetLite with the torch backend: what each optimization gives.

    python -m benchmarks.gpu_speed [--out results.json] [--compile]

Measures, on the current CUDA device:
  * the card's dense bf16 matmul rate (8192^3), the ceiling for "useful conv FLOPs";
  * inference of the unpruned 3-stage model at 288x384: batch 1 latency and batch 64 throughput for
    fp32 / fp16 / bf16, NCHW vs channels_last, cuDNN benchmark, CUDA graphs, torch.compile;
  * training fwd+bwd+AdamW step at 256x256, batch 32, bf16-mixed, channels_last, fed from memory.
FLOPs are counted from the conv layers (2 x MACs). Timing: CUDA events, warm-up first, median of repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from posekit.model.bpnet import BpNetLite, FinalStage


def conv_flops(model: nn.Module, shape: tuple[int, int, int, int]) -> float:
    """Forward FLOPs (2 x MACs) of every Conv2d for one input of ``shape`` (N, C, H, W), per image."""
    total = 0

    def hook(m: nn.Conv2d, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2 * k * out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(shape, device=next(model.parameters()).device))
    for h in hs:
        h.remove()
    return total / shape[0]


def cuda_time_ms(fn, iters: int, warmup: int = 10, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean ms per call over ``iters`` calls (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / iters)
    return statistics.median(out)


def matmul_tflops() -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: a @ b, iters=20)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def graph_runner(fn, x: torch.Tensor):
    """Capture ``fn(x)`` in a CUDA graph; returns a replay closure (input copied into the static buffer)."""
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(static_x)

    def replay():
        static_x.copy_(x)
        g.replay()

    return replay


def inference_variants(hw=(288, 384), do_compile=False) -> list[dict]:
    results = []
    base = BpNetLite(stages=3).cuda().eval()
    flops = conv_flops(FinalStage(base), (1, 3, *hw))
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    variants = [
        ("fp32", False, False, False),
        ("fp16", False, False, False),
        ("fp16", True, False, False),
        ("fp16", True, True, False),
        ("fp16", True, True, True),
        ("bf16", True, True, True),
    ]
    for prec, cl, bench, graphs in variants:
        torch.backends.cudnn.benchmark = bench
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = FinalStage(BpNetLite(stages=3)).cuda().eval().to(dtype=dtypes[prec], memory_format=fmt)
        row = {"precision": prec, "channels_last": cl, "cudnn_benchmark": bench, "cuda_graphs": graphs}
        for batch, iters in ((1, 100), (64, 10)):
            x = torch.randn(batch, 3, *hw, device="cuda", dtype=dtypes[prec]).to(memory_format=fmt)
            with torch.inference_mode():
                fn = (lambda: net(x)) if not graphs else graph_runner(lambda t: net(t), x)
                ms = cuda_time_ms(fn, iters)
            row[f"b{batch}_ms"] = ms
            row[f"b{batch}_img_s"] = batch / ms * 1e3
            row[f"b{batch}_tflops"] = flops * batch / (ms * 1e-3) / 1e12
        results.append(row)
        print(row, flush=True)
    if do_compile:
        torch.backends.cudnn.benchmark = True
        net = FinalStage(BpNetLite(stages=3)).cuda().eval().half().to(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        cnet = torch.compile(net, mode="max-autotune-no-cudagraphs")
        row = {"precision": "fp16", "channels_last": True, "cudnn_benchmark": True, "cuda_graphs": True,
               "compile": "max-autotune-no-cudagraphs"}
        for batch, iters in ((1, 100), (64, 10)):
            x = torch.randn(batch, 3, *hw, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
            with torch.inference_mode():
                cnet(x)
                fn = graph_runner(lambda t: cnet(t), x)
                ms = cuda_time_ms(fn, iters)
            row[f"b{batch}_ms"] = ms
            row[f"b{batch}_img_s"] = batch / ms * 1e3
            row[f"b{batch}_tflops"] = flops * batch / (ms * 1e-3) / 1e12
        row["compile_s"] = time.perf_counter() - t0
        results.append(row)
        print(row, flush=True)
    return results, flops


def training_from_memory(hw=(256, 256), batch=32, steps=30) -> dict:
    torch.backends.cudnn.benchmark = True
    net = BpNetLite(stages=3).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, 3, *hw, device="cuda").to(memory_format=torch.channels_last)
    h, w = hw[0] // 8, hw[1] // 8
    th = torch.rand(batch, 19, h, w, device="cuda")
    tp = torch.rand(batch, 38, h, w, device="cuda")
    mask = torch.ones(batch, 1, h, w, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            heats, pafs = net(x)
            loss = sum(((hh.float() - th) ** 2 * mask).sum() + ((pp.float() - tp) ** 2 * mask).sum()
                       for hh, pp in zip(heats, pafs)) / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ms = cuda_time_ms(step, iters=steps, warmup=10, repeats=3)
    return {"input": list(hw), "batch": batch, "ms_per_step": ms, "img_s": batch / ms * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed needs a CUDA GPU")
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    peak = matmul_tflops()
    print(f"dense bf16 matmul 8192^3: {peak:.0f} TFLOP/s", flush=True)
    train = training_from_memory()
    print("train from memory:", train, flush=True)
    inf, flops = inference_variants(do_compile=args.compile)
    res = {"device": dev, "torch": torch.__version__, "matmul_bf16_tflops": peak,
           "gflop_per_image_288x384": flops / 1e9, "inference": inf, "train_from_memory": train}
    print(f"\n{'variant':44s} {'b1 ms':>8s} {'b64 img/s':>10s} {'b64 TFLOP/s':>12s} {'% of matmul':>12s}")
    for r in inf:
        name = f"{r['precision']} cl={int(r['channels_last'])} bench={int(r['cudnn_benchmark'])} graphs={int(r['cuda_graphs'])}" + (" compile" if r.get("compile") else "")
        print(f"{name:44s} {r['b1_ms']:8.3f} {r['b64_img_s']:10.0f} {r['b64_tflops']:12.1f} {100 * r['b64_tflops'] / peak:11.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
