"""Short in-process training runs that compare recipes: ``python -m benchmarks.recipe_probe NAME [k=v ...]``.

The figures in docs/training.md ("Which recipe is the default", "Head initialization") come from this script. It
trains the ``cpu_demo`` network (or any override) with the real ``PoseModule``, loss, optimizer and data module,
without Lightning (so runs differ only in what is being compared), evaluates val AP through the real evaluator at
``evals`` evenly spaced points, and prints ``NAME (step, running loss, AP, seconds)``.

Keys: ``steps`` (600), ``lr`` (1e-3), ``init`` (kaiming | tao), ``opt`` (adamw | sgd; sgd uses TAO's schedule and
stage-wise multipliers), ``bs`` (16), ``evals`` (3), ``wd`` (1e-4), ``warm`` (0.05), ``prec`` (bf16 | fp32); every
other ``key=value`` is a config override, e.g. ``model.width=0.125``. Examples::

    python -m benchmarks.recipe_probe base steps=1200 evals=2 init=tao
    python -m benchmarks.recipe_probe he   steps=1200 evals=2 init=kaiming
    python -m benchmarks.recipe_probe sgd  steps=300 evals=1 opt=sgd lr=1e-4 wd=0 init=tao
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="the run's label in the printed rows")
    ap.add_argument("settings", nargs="*", metavar="key=value", help="the keys above, or config overrides")
    args = ap.parse_args(argv)
    name, kv = args.name, dict(a.split("=", 1) for a in args.settings)
    steps, lr, init = int(kv.pop("steps", 600)), float(kv.pop("lr", 1e-3)), kv.pop("init", "kaiming")
    opt_name, bs, evals = kv.pop("opt", "adamw"), int(kv.pop("bs", 16)), int(kv.pop("evals", 3))
    wd, warm, prec = float(kv.pop("wd", 1e-4)), float(kv.pop("warm", 0.05)), kv.pop("prec", "bf16")

    from posekit.config import compose
    from posekit.data.datamodule import PoseDataModule
    from posekit.train.fit import coco_ap_evaluator
    from posekit.train.loss import pose_loss
    from posekit.train.module import PoseModule, plain
    from posekit.train.optim import build_optimizer

    cfg = compose(["preset=cpu_demo", f"data.batch_size={bs}", "data.num_workers=0",
                   *(f"{k}={v}" for k, v in kv.items())])
    torch.manual_seed(0)
    dm = PoseDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    arch = dict(stages=cfg.model.stages, num_heatmaps=dm.skeleton.num_heatmaps, num_pafs=dm.skeleton.num_pafs,
                width=cfg.model.width)
    optim = plain(cfg.optim)
    optim.update(lr=lr, name=opt_name, weight_decay=wd, warmup=warm)
    if opt_name == "sgd":
        optim.update(momentum=0.9, schedule="softstart_annealing", min_lr=lr / 250, stagewise_lr=True)
    module = PoseModule(arch, optim, channels_last=True, head_init=init)
    net = module.net
    opt, sched = build_optimizer(net, optim, steps)
    evaluate = coco_ap_evaluator(cfg, dm, "bf16" if prec == "bf16" else "fp32")
    loader = dm.train_dataloader()
    batches, step, running, t0 = iter(loader), 0, None, time.time()
    eval_at = {int(steps * (i + 1) / evals) for i in range(evals)}
    while step < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        net.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            heats, pafs = module(batch["image"])
            loss, _ = pose_loss(heats, pafs, batch["heatmaps"], batch["pafs"], batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step in eval_at:
            t_eval = time.time()
            with contextlib.redirect_stdout(io.StringIO()):
                ap = evaluate(net, torch.device("cpu"))
            print(name, (step, round(running, 1), round(ap, 4), round(time.time() - t0)), flush=True)
            t0 += time.time() - t_eval  # seconds exclude evaluation
        elif step % 100 == 0:
            print(name, step, round(running, 1), round(time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
