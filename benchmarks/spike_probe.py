"""Where does a training loss spike come from? Train with per-step diagnostics and report every spike.

    python -m benchmarks.spike_probe --out DIR --stop-at 1500 preset=gpu seed=7 optim.grad_clip=null \
        optim.guard.spike_factor=0 experiment.name=probe-s7

The run is the train stage's own (same config, data, module, optimizer and planned schedule: ``--stop-at`` ends it
early without shortening the schedule), plus :class:`SpikeProbe`, which records on every step:

* the loss, and each stage's heatmap and PAF terms (recomputed from the forward pass's outputs);
* the global gradient norm and each conv layer's weight-gradient norm, before clipping;
* each ReLU's output RMS and the share of its channels that are dead (zero on every pixel of the batch);
* each conv layer's weight norm, and the learning rate;
* for each conv that feeds a BatchNorm: the share of its channels the BN has switched off (``|gamma| < 0.01``), the
  median kernel-row norm of those channels and of the others, and the gradient norm of each group's kernel rows and
  of the BN scales (the scale-invariance hypothesis of docs/training.md, "A spike that persists").

It writes ``DIR/probe-<name>.jsonl`` (one JSON object a step, after a header line naming the layers) and prints a
report: for each step whose loss exceeds 3x, or whose gradient norm exceeds 5x, the running median of the previous
100 steps, the stage terms and the
layers whose gradient grew most against the median of the 100 steps before, and per stage the dead-ReLU share 100
steps before, at and 200 steps after the spike. A lab tool: it syncs with the device several times a step.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from posekit.config import compose, validate
from posekit.experiment import Experiment
from posekit.stages.train import module_factory
from posekit.train.fit import fit
from posekit.train.loss import masked_l2, normalized_convs

OFF = 0.01  # |gamma| below this: the BN has switched the channel off


class SpikeProbe(pl.Callback):
    """Per-step diagnostics (see the module docstring), appended to ``path`` as JSON lines."""

    def __init__(self, path: Path, stop_at: int | None = None):
        self.path, self.stop_at = path, stop_at
        self._fh = None
        self._acts: dict[str, torch.Tensor] = {}
        self._outputs: Any = None
        self._grads: torch.Tensor | None = None
        self._bn_grads: torch.Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = pl_module.net
        self.convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        self.relus = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
        names = {id(m): n for n, m in net.named_modules()}
        normalized = {id(c) for c in normalized_convs(net)}
        self.pairs = []  # (conv name, conv, its BN)
        for parent in net.modules():
            kids = list(parent.children())
            self.pairs += [(names[id(a)], a, b) for a, b in zip(kids, kids[1:]) if id(a) in normalized]
        for name, m in self.relus:
            m.register_forward_hook(self._act_hook(name))
        net.register_forward_hook(lambda mod, inp, out: setattr(self, "_outputs", out))
        self._fh = self.path.open("w")
        self._fh.write(json.dumps({"convs": [n for n, _ in self.convs], "relus": [n for n, _ in self.relus],
                                   "bn_convs": [n for n, _, _ in self.pairs]}) + "\n")

    def _act_hook(self, name: str):
        def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
            if not mod.training:
                return
            with torch.no_grad():
                o = out.detach().float()
                rms = o.pow(2).mean().sqrt()
                dead = (o.amax(dim=(0, 2, 3)) <= 0).float().mean()  # channels zero on every pixel of the batch
                self._acts[name] = torch.stack([rms, dead])

        return hook

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # callbacks run before the module's hook: these are the raw (unclipped) loss gradients
        norms = [m.weight.grad.detach().float().norm() if m.weight.grad is not None else torch.zeros((), device=pl_module.device)
                 for _, m in self.convs]
        self._grads = torch.stack(norms)
        rows = []
        for _, conv, bn in self.pairs:
            zero = torch.zeros((), device=pl_module.device)
            g = conv.weight.grad
            off = bn.weight.detach().abs() < OFF
            sq = g.detach().float().pow(2).sum(dim=(1, 2, 3)) if g is not None else torch.zeros_like(off, dtype=torch.float)
            gg = bn.weight.grad.detach().float().norm() if bn.weight.grad is not None else zero
            rows.append(torch.stack([sq[off].sum().sqrt(), sq[~off].sum().sqrt(), gg]))
        self._bn_grads = torch.stack(rows) if rows else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step) - 1
        with torch.no_grad():
            heats, pafs = self._outputs
            terms = []
            for h, p in zip(heats, pafs):
                terms += [masked_l2(h, batch["heatmaps"], batch["mask"]), masked_l2(p, batch["pafs"], batch["mask"])]
            weights = torch.stack([m.weight.detach().float().norm() for _, m in self.convs])
            acts = torch.stack([self._acts[n] for n, _ in self.relus])
            grads = self._grads if self._grads is not None else torch.zeros_like(weights)
            blob = torch.cat([torch.stack(terms).float(), grads, weights, acts.flatten()]).cpu().tolist()
            bn_rows = []
            for _, conv, bn in self.pairs:
                rnorm = conv.weight.detach().float().pow(2).sum(dim=(1, 2, 3)).sqrt()
                off = bn.weight.detach().abs() < OFF
                nan = torch.full((), float("nan"), device=rnorm.device)
                bn_rows.append(torch.stack([
                    off.float().mean(),
                    rnorm[off].median() if off.any() else nan,
                    rnorm[~off].median() if (~off).any() else nan,
                ]))
            bn_w = torch.stack(bn_rows).cpu().tolist() if bn_rows else []
            bn_g = self._bn_grads.cpu().tolist() if self._bn_grads is not None else []
        n_t, n_c = len(terms), len(self.convs)
        guard = pl_module.guard.steps[-1] if pl_module.guard is not None and pl_module.guard.steps else None
        group = trainer.optimizers[0].param_groups[0]
        record = {
            "step": step,
            "loss": guard[1] if guard else sum(blob[:n_t]),
            "grad_norm": guard[2] if guard else None,
            "skipped": bool(guard[3]) if guard else False,
            "lr": group["lr"] / group.get("lr_mult", 1.0),
            "terms": blob[:n_t],
            "layer_grad": blob[n_t:n_t + n_c],
            "weight": blob[n_t + n_c:n_t + 2 * n_c],
            "act_rms": blob[n_t + 2 * n_c::2],
            "dead": blob[n_t + 2 * n_c + 1::2],
            # per conv feeding a BN: [off share, median row norm off, median row norm on]
            "bn_w": [[round(x, 5) for x in r] for r in bn_w],
            # per conv feeding a BN: [grad norm of off rows, grad norm of on rows, grad norm of the BN scales]
            "bn_g": [[round(x, 4) for x in r] for r in bn_g],
        }
        self._fh.write(json.dumps(record) + "\n")
        if step % 50 == 0:
            self._fh.flush()  # a run killed at its time limit keeps what it measured
        if self.stop_at is not None and step + 1 >= self.stop_at:
            trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._fh is not None:
            self._fh.close()


# --------------------------------------------------------------------------------------------- report
def bn_summary(head: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    """The BN-fed convs of one step record, those with a channel switched off or a large gradient first."""
    out = []
    for name, w, g in zip(head.get("bn_convs", []), row.get("bn_w", []), row.get("bn_g", [])):
        out.append({"conv": name, "off": w[0], "row_norm_off": w[1], "row_norm_on": w[2],
                    "grad_off": g[0], "grad_on": g[1], "grad_gamma": g[2]})
    return sorted(out, key=lambda d: -(d["grad_off"] + d["grad_on"]))


def stage_of(name: str) -> str:
    parts = name.split(".")
    return f"stage{int(parts[1]) + 1}" if parts[0] == "stages" else parts[0]


def report(path: Path, ratio: float = 3.0, window: int = 100, grad_ratio_limit: float = 5.0) -> dict[str, Any]:
    lines = path.read_text().splitlines()
    head, rows = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    convs, relus = head["convs"], head["relus"]
    stages = sorted({stage_of(n) for n in relus})
    out: dict[str, Any] = {"steps": len(rows), "spikes": []}
    if not rows:
        return out
    losses = [r["loss"] for r in rows]
    print(f"{path.name}: {len(rows)} steps, loss {losses[0]:.4g} -> {statistics.median(losses[-50:]):.4g} "
          f"(median of the last 50), max {max(losses):.4g} at step {rows[losses.index(max(losses))]['step']}")

    def dead_by_stage(i: int) -> dict[str, float]:
        i = max(0, min(len(rows) - 1, i))
        return {s: round(statistics.mean(d for n, d in zip(relus, rows[i]["dead"]) if stage_of(n) == s), 3)
                for s in stages}

    norms = [r["grad_norm"] for r in rows]
    last_spike = -10**9
    for i in range(window, len(rows)):
        med = statistics.median(losses[i - window:i])
        prev_norms = [x for x in norms[i - window:i] if x is not None]
        norm_med = statistics.median(prev_norms) if prev_norms else None
        norm_spike = norms[i] is not None and norm_med is not None and norms[i] > grad_ratio_limit * norm_med
        if (losses[i] <= ratio * med and not norm_spike) or i - last_spike < 50:
            continue
        last_spike = i
        r = rows[i]
        before = rows[i - window:i]
        grad_ratio = []
        for j, name in enumerate(convs):
            base = statistics.median(b["layer_grad"][j] for b in before) or 1e-12
            grad_ratio.append((r["layer_grad"][j] / base, name))
        grad_ratio.sort(reverse=True)
        n_stage = len(r["terms"]) // 2
        term_names = [f"s{k + 1}/{t}" for k in range(n_stage) for t in ("heat", "paf")]
        base_terms = [statistics.median(b["terms"][k] for b in before) for k in range(len(term_names))]
        spike = {
            "step": r["step"], "loss": r["loss"], "median_before": med, "lr": r["lr"], "grad_norm": r["grad_norm"],
            "grad_norm_median_before": statistics.median(b["grad_norm"] for b in before if b["grad_norm"] is not None)
            if any(b["grad_norm"] is not None for b in before) else None,
            "terms": dict(zip(term_names, [round(t, 2) for t in r["terms"]])),
            "terms_median_before": dict(zip(term_names, [round(t, 2) for t in base_terms])),
            "top_grad_ratio": [(n, round(x, 1)) for x, n in grad_ratio[:6]],
            "dead_before": dead_by_stage(i - window), "dead_at": dead_by_stage(i),
            "dead_after_200": dead_by_stage(i + 200),
            "loss_after_200": statistics.median(losses[i + 150:i + 250]) if i + 150 < len(rows) else None,
            "bn_before": bn_summary(head, rows[i - 1]), "bn_at": bn_summary(head, r),
        }
        out["spikes"].append(spike)
        print(json.dumps(spike))
    out["dead_final"] = dead_by_stage(len(rows) - 1)
    out["act_rms_final"] = {n: round(v, 3) for n, v in zip(relus, rows[-1]["act_rms"])}
    print("dead ReLU channels at the end, by stage:", out["dead_final"])
    out["bn_final"] = bn_summary(head, rows[-1])
    for every in range(0, len(rows), max(1, len(rows) // 8)):  # the BN picture over the run
        b = bn_summary(head, rows[every])
        if b:
            print(f"step {rows[every]['step']}: off share " + " ".join(f"{d['off']:.2f}" for d in b[:4])
                  + " | grad off/on of the top layer " + f"{b[0]['grad_off']:.3g}/{b[0]['grad_on']:.3g} ({b[0]['conv']})")
    return out


def bn_table(path: Path, every: int = 200, layers: Sequence[str] = ("backbone.block_4a.conv", "backbone.block_4b.conv"),
             csv_out: Path | None = None) -> list[dict[str, Any]]:
    """The scale-invariance picture over a probe run: every ``every`` steps, the loss, the gradient norm, and for
    each named BN-fed conv the share of channels switched off, the median kernel-row norm of those and of the
    others, and the gradient norm of the switched-off rows. Prints a markdown table; ``csv_out`` gets every 10th
    step of every BN-fed conv (the committed, reduced form of a probe's JSONL)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        head = json.loads(fh.readline())
        rows = [json.loads(line) for line in fh]
    names = head.get("bn_convs", [])
    idx = [names.index(n) for n in layers if n in names]
    out = []
    print("| step | loss | grad norm | " + " | ".join(
        f"{names[i]}: off share, row norm off / on, grad off" for i in idx) + " |")
    print("|---:|---:|---:|" + "---|" * len(idx))
    for r in rows:
        if r["step"] % every and r is not rows[-1]:
            continue
        cells = []
        for i in idx:
            w, g = r["bn_w"][i], r["bn_g"][i]
            off_norm = "—" if w[1] != w[1] else f"{w[1]:.3f}"
            cells.append(f"{w[0]:.2f}, {off_norm} / {w[2]:.3f}, {g[0]:.2f}")
        print(f"| {r['step']} | {r['loss']:.0f} | {r['grad_norm']:.0f} | " + " | ".join(cells) + " |")
        out.append(r)
    if csv_out is not None:
        with csv_out.open("w") as fh:
            fh.write("step,loss,grad_norm,lr,conv,off_share,row_norm_off,row_norm_on,grad_off,grad_on,grad_gamma\n")
            for r in rows[::10]:
                for n, w, g in zip(names, r["bn_w"], r["bn_g"]):
                    fh.write(f"{r['step']},{r['loss']:.2f},{r['grad_norm']:.1f},{r['lr']:.3e},{n},"
                             + ",".join(f"{x:.5g}" for x in (*w, *g)) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="where the JSONL and the report go (required to train)")
    ap.add_argument("--stop-at", type=int, default=None, help="end the run after this many steps (schedule unchanged)")
    ap.add_argument("--report-only", type=Path, default=None, help="only print the report of an existing JSONL")
    ap.add_argument("--bn-table", type=Path, default=None,
                    help="only print the BN-fed convs over an existing JSONL (.gz too); with --csv, write its reduced form")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.bn_table:
        bn_table(args.bn_table, csv_out=args.csv)
        return
    if args.report_only:
        report(args.report_only)
        return
    if args.out is None:
        ap.error("--out is required to train")
    cfg = compose(["stage=train", *args.overrides])
    validate(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"probe-{cfg.experiment.name}.jsonl"
    make_module, meta = module_factory(cfg)
    stage_dir = Experiment(cfg).dir("train")
    fit(cfg, stage_dir, make_module, max_epochs=int(cfg.trainer.max_epochs), model_meta=meta,
        extra_callbacks=[SpikeProbe(path, args.stop_at)])
    json.dump(report(path), (args.out / f"probe-{cfg.experiment.name}.report.json").open("w"), indent=1)


if __name__ == "__main__":
    main()
