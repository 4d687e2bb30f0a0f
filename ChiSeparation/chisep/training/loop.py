"""Resumable, seeded training of the chi-sepnet networks on the simulated-data cache.

Two kinds (names as in :mod:`chisep.network.weights`):

* ``chisepnet-r2prime``: 3 -> 2 (inputs QSM, local field, R2'/Dr; outputs chi_para, |chi_dia|),
  loss :func:`chisep.training.losses.chisep_loss` (the published loss).
* ``r2prime-from-r2star``: 1 -> 1 (input R2*/Dr, output R2'/Dr, both z-scored), L1 + 0.1 GDL.

Each input is z-scored with OUR constants (mean/std inside the mask over the training volumes)
then multiplied by the mask, as inference does. Optimiser RMSprop (lr 3e-4) by default.

Outputs in ``out``: ``ckpt_last.pt`` / ``ckpt_best.pt`` (plain dicts of state dicts + numbers,
loadable with ``torch.load(..., weights_only=True)``), ``metrics.jsonl`` (one JSON object a line:
training losses every ``log_every`` steps, validation NRMSE every ``val_every`` steps) and
``config.json``. Batches are a pure function of (seed, step), so a resumed run sees the batches
an uninterrupted one would have seen.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from . import data as D
from .config import KINDS, TrainConfig
from .losses import chisep_loss, r2prime_loss

def channels(kind):
    if kind == "chisepnet-r2prime":
        return D.CHISEP_INPUTS, D.CHISEP_OUTPUTS
    if kind == "r2prime-from-r2star":
        return D.R2P_INPUTS, D.R2P_OUTPUTS
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def build_model(kind, width):
    from ..network.unet import ChiSepUNet

    ins, outs = channels(kind)
    return ChiSepUNet(in_channels=len(ins), out_channels=len(outs), width=int(width))


# --------------------------------------------------------------------------- batches
#: cache key of each channel: the one table of :mod:`chisep.training.data` (also used to compute the
#: normalisation constants), so the z-scored inputs and the constants always name the same maps
_SRC = D.NORM_SOURCE


def _sources(kind: str, r2prime_key: str = "r2p") -> dict:
    """Cache key of each channel; chi-sepnet's R2' input may come from another key (``r2p_pred``)."""
    return dict(_SRC, r2prime_over_dr=r2prime_key) if kind == "chisepnet-r2prime" else _SRC


def to_tensors(b: dict, kind: str, norm: dict, device, channels_last=False, r2prime_key="r2p"):
    """Network input/label tensors (z-scored, masked) + the ppm maps the physics terms need.

    ``b``: stacked patches (N, 1, X, Y, Z), any float dtype; an optional ``_aug`` list (one
    augmentation dict per sample, :func:`chisep.training.data.draw_augmentation`) is applied on
    the device. ``r2prime_key``: the cache key of chi-sepnet's R2'/Dr input (``r2p_pred`` trains the
    R2* pipeline's chi-sepnet on the R2' that the R2'-prediction net gives); ``t["r2p"]`` is then
    that input too, so the physics term compares with what the network saw.
    """
    import torch

    ins, outs = channels(kind)
    src = _sources(kind, r2prime_key)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True).float()
         for k, v in b.items() if not k.startswith("_")}
    if b.get("_aug"):
        t = D.augment_torch(t, b["_aug"])
    m = t["mask"]
    x = torch.cat([(t[src[c]] - norm[c][0]) / norm[c][1] * m for c in ins], 1)
    if kind == "chisepnet-r2prime":
        if r2prime_key != "r2p":
            t["r2p"] = t[r2prime_key]
        y = torch.cat([(t[src[c]] - norm[c][0]) / norm[c][1] * m for c in outs], 1)
    else:
        c = outs[0]
        y = (t["r2p_true"] - norm[c][0]) / norm[c][1] * m
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, y, t


class _Prefetch:
    """Makes the batches of the coming steps in a background thread (numpy slicing releases the GIL)."""

    def __init__(self, sampler, start, stop, batch, depth=3):
        import queue
        import threading

        self.q = queue.Queue(maxsize=depth)
        self.stop_flag = False

        def work():
            for st in range(start, stop):
                if self.stop_flag:
                    break
                try:
                    item = (st, sampler.batch(st, batch))
                except Exception as exc:  # noqa: BLE001 - re-raised in the main thread
                    item = (st, exc)
                self.q.put(item)
        self.th = threading.Thread(target=work, daemon=True)
        self.th.start()

    def get(self, step):
        st, b = self.q.get()
        if isinstance(b, Exception):
            raise b
        assert st == step, (st, step)
        return b

    def close(self):
        self.stop_flag = True
        while self.th.is_alive():
            try:
                self.q.get_nowait()
            except Exception:  # noqa: BLE001
                pass
            self.th.join(timeout=0.05)


def compute_loss(model, x, y, t, kind, norm, cfg: TrainConfig, autocast_ctx):
    with autocast_ctx():
        pred = model(x)
    if kind == "chisepnet-r2prime":
        return chisep_loss(pred, y, t["mask"], (norm["chi_para"], norm["chi_dia"]),
                           field_ppm=t["field"], qsm_ppm=t["qsm"], r2p_over_dr_ppm=t["r2p"],
                           field_mask=t["fmask"], weights=cfg.loss_weights, lesion=t.get("lesion"),
                           lesion_weight=cfg.lesion_weight)
    return r2prime_loss(pred, y, t["mask"], cfg.loss_weights)



def denorm_outputs(pred_z, kind, norm, mask):
    """(N, C, ...) z-scored network output -> dict of ppm maps (clipped >= 0, masked)."""
    _, outs = channels(kind)
    res = {}
    for i, c in enumerate(outs):
        v = pred_z[:, i] * norm[c][1] + norm[c][0]
        res[c] = np.clip(v, 0, None) * mask
    return res


def predict(model, x, autocast_ctx):
    import torch

    with torch.no_grad(), autocast_ctx():
        return model(x).float()


def validate_patches(model, patches, kind, norm, device, autocast_ctx, channels_last=False, bs=2,
                     r2prime_key="r2p"):
    """NRMSE (%) of each output over fixed validation patches (evaluation mask), pooled."""
    _, outs = channels(kind)
    acc = {c: [0.0, 0.0] for c in outs}
    truth_key = {"chi_para": "para", "chi_dia": "dia", "r2prime_over_dr": "r2p_true"}
    model.eval()
    for i in range(0, len(patches), bs):
        group = patches[i:i + bs]
        b = {k: np.stack([p[k] for p in group])[:, None] for k in group[0]}
        x, _, _ = to_tensors(b, kind, norm, device, channels_last, r2prime_key)
        pz = predict(model, x, autocast_ctx).cpu().numpy()
        res = denorm_outputs(pz, kind, norm, b["mask"][:, 0])
        em = b["emask"][:, 0] > 0
        for c in outs:
            t = b[truth_key[c]][:, 0]
            acc[c][0] += float(((res[c] - t)[em] ** 2).sum())
            acc[c][1] += float((t[em] ** 2).sum())
    model.train()
    return {c: float(100 * np.sqrt(a / max(n, 1e-20))) for c, (a, n) in acc.items()}


def infer_volume(model, vol: "D.Volume", kind, norm, device, autocast_ctx, tile=96, margin=16,
                 channels_last=False, r2prime_key="r2p"):
    """Whole-volume prediction by overlapping tiles (sizes multiples of 16, zero padding)."""
    import torch

    ins, outs = channels(kind)
    m = vol.masks["mask"].astype(np.float32)
    src = _sources(kind, r2prime_key)
    x = np.stack([(vol.maps[src[c]].astype(np.float32) - norm[c][0]) / norm[c][1] * m for c in ins])
    shape = np.array(m.shape)
    step = tile - 2 * margin
    n = np.maximum(np.ceil(shape / step).astype(int), 1)
    full = n * step + 2 * margin
    xp = np.zeros((len(ins),) + tuple(full), np.float32)
    xp[:, margin: margin + shape[0], margin: margin + shape[1], margin: margin + shape[2]] = x
    out = np.zeros((len(outs),) + tuple(n * step), np.float32)
    model.eval()
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                lo = np.array([i, j, k]) * step
                sl = tuple(slice(a, a + tile) for a in lo)
                xt = torch.from_numpy(np.ascontiguousarray(xp[(slice(None),) + sl][None])).to(device)
                if channels_last:
                    xt = xt.contiguous(memory_format=torch.channels_last_3d)
                y = predict(model, xt, autocast_ctx).cpu().numpy()[0]
                inner = tuple(slice(a, a + step) for a in lo)
                out[(slice(None),) + inner] = y[(slice(None),) + (slice(margin, tile - margin),) * 3]
    model.train()
    y = out[:, : shape[0], : shape[1], : shape[2]][None]
    return denorm_outputs(y, kind, norm, m[None])


def volume_metrics(pred: dict, vol: "D.Volume", kind) -> dict:
    """NRMSE/PSNR/SSIM/HFEN (:mod:`chisep.metrics`) of each output on one
    volume, in its evaluation mask (brain minus CSF minus vessels)."""
    from .. import metrics as M

    _, outs = channels(kind)
    truth_key = {"chi_para": "para", "chi_dia": "dia", "r2prime_over_dr": "r2p_true"}
    em = vol.masks["emask"] > 0
    res = {}
    for c in outs:
        p = pred[c][0]
        t = vol.maps[truth_key[c]].astype(np.float32)
        res[c] = {k: float(v) for k, v in M.all_metrics(p, t, em).items()}
    return res


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optim, step, cfg, norm, best, best_step, elapsed_s, extra=None):
    import torch

    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optim": optim.state_dict() if optim is not None else {},
             "step": int(step), "config": json.loads(json.dumps(asdict(cfg))), "norm": norm,
             "best": float(best), "best_step": int(best_step), "elapsed_s": float(elapsed_s),
             "extra": extra or {}}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict) from a training checkpoint."""
    ck = load_checkpoint(path)
    cfg = ck["config"]
    model = build_model(cfg["kind"], cfg["width"])
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return model, ck


def init_checkpoint_from_weights(weights, out_dir, cfg) -> Path:
    """Start a fine-tuning run from a weights file: ``out_dir/ckpt_last.pt`` at step 0 with the
    weights' parameters (BatchNorm statistics included) and their normalisation, no optimiser
    state. Refuses to overwrite an existing run (resume that instead)."""
    import torch

    from ..network.weights import load_weights

    out = Path(out_dir)
    ck = out / "ckpt_last.pt"
    if ck.exists():
        raise FileExistsError(f"{ck} exists: continue it with --resume, or start in an empty folder")
    ws = load_weights(weights, kind=cfg.kind)
    if ws.width is not None and int(ws.width) != int(cfg.width):
        raise ValueError(f"{weights} has width {ws.width}, the run asks for --width {cfg.width}")
    model = build_model(cfg.kind, cfg.width)
    model.load_state_dict({k: v.float() for k, v in ws.model.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ck, model, None, 0, cfg, {k: list(map(float, v)) for k, v in ws.norm.items()},
                    float("inf"), -1, 0.0, extra={"init_weights": str(weights), "init_sha256": ws.sha256})
    torch.set_num_threads(torch.get_num_threads())
    return ck


# --------------------------------------------------------------------------- the loop
class _JsonLog:
    def __init__(self, path):
        self.path = Path(path)

    def __call__(self, obj):
        with open(self.path, "a") as fh:
            fh.write(json.dumps(obj) + "\n")


def _autocast_factory(device, bf16):
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _lr_at(cfg: TrainConfig, step, run_elapsed_s=0.0, t_start=0.0):
    """Learning rate: constant, or cosine from lr to lr_min over the run's progress, which is the
    larger of step/steps and (with max_minutes) this invocation's elapsed time / max_minutes."""
    if cfg.lr_schedule == "cosine":
        f = step / max(cfg.steps, 1)
        if cfg.max_minutes:
            f = max(f, run_elapsed_s / (cfg.max_minutes * 60.0))
        if cfg.stop_at and t_start:
            f = max(f, (time.time() - t_start) / max(cfg.stop_at - t_start, 1.0))
        f = min(f, 1.0)
        lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * f))
    else:
        lr = cfg.lr
    if cfg.warmup_steps and step < cfg.warmup_steps:
        lr = lr * (step + 1) / cfg.warmup_steps
    return lr


class ShapesOnlySampler:
    """Random-shape patches generated on the fly (truth-derived inputs, no preprocessing): tests."""

    def __init__(self, patch, seed, scale_range=(0.6, 1.6), flips=True, pool=0):
        self.patch = int(patch)
        self.seed = int(seed)
        self.scale_range = scale_range
        self.flips = flips
        self.pool = [shapes_patch(self.seed * 1000 + i, self.patch) for i in range(int(pool))]

    def batch(self, step, batch):
        rng = np.random.default_rng([self.seed, int(step)])
        if self.pool:
            ps = [self.pool[int(rng.integers(len(self.pool)))] for _ in range(batch)]
        else:
            ps = [shapes_patch(int(rng.integers(2 ** 31)), self.patch) for _ in range(batch)]
        b = {k: np.stack([p[k] for p in ps])[:, None] for k in ps[0]}
        b["_aug"] = [D.draw_augmentation(rng, self.scale_range, self.flips) for _ in range(batch)]
        return b


def shapes_patch(seed, n):
    """A fast random-shape patch with exact physics (field = forward_field of the patch's chi)."""
    from .. import physics

    T = D.random_shapes_truth(seed, n)
    m = T["brain"].astype(np.float32)
    rng = np.random.default_rng([seed, 3])
    field = T["local_field"] * m
    r2p = (T["chi_para"] + T["chi_dia"]) * m
    k = physics.dipole_kernel(m.shape, dc=0.0)
    kk = np.where(np.abs(k) < 0.1, 0.1 * np.sign(k + 1e-12), k)
    qsm = np.real(np.fft.ifftn(np.fft.fftn(field) / kk)) * m
    return {"field": field.astype(np.float32), "qsm": qsm.astype(np.float32),
            "r2p": (r2p + rng.normal(0, 0.002, m.shape) * m).astype(np.float32),
            "r2s": ((T["r2"] / D.DR) * m + r2p).astype(np.float32),
            "para": T["chi_para"] * m, "dia": T["chi_dia"] * m, "r2p_true": r2p.astype(np.float32),
            "mask": m, "fmask": m, "emask": m}


def train(cfg: TrainConfig, log=print):
    """Train (or resume) per ``cfg``. Returns a summary dict."""
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(int(cfg.threads), 1))
    from ..network.inference import resolve_device
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2 ** 32))
    jlog = _JsonLog(out / "metrics.jsonl")
    ck_last = out / "ckpt_last.pt"
    resume_state = None
    if cfg.resume and ck_last.exists():
        resume_state = load_checkpoint(ck_last)
        log(f"resuming from {ck_last} at step {resume_state['step']}")

    # ---- data
    val_patches = []
    names_seen = set()
    if cfg.shapes_only or not cfg.cache:
        sampler = ShapesOnlySampler(cfg.patch, cfg.seed, (cfg.scale_min, cfg.scale_max), cfg.flips,
                                    cfg.shapes_pool)
        norm_vols = None
        val_patches = [shapes_patch(10 ** 6 + i, cfg.patch) for i in range(2)]
    else:
        t0 = time.time()
        vols = D.load_cache(cfg.cache, "train")
        while sum(v.kind != "shapes" for v in vols) < cfg.min_volumes:
            log(f"waiting for training heads in {cfg.cache}: "
                f"{sum(v.kind != 'shapes' for v in vols)}/{cfg.min_volumes}")
            time.sleep(20)
            vols += D.load_cache(cfg.cache, "train", {v.name for v in vols})
        names_seen = {v.name for v in vols}
        log(f"{len(vols)} training volumes loaded in {time.time() - t0:.0f} s: "
            + ", ".join(sorted(names_seen)))
        sampler = D.PatchSampler(vols, cfg.patch, cfg.p_shapes, (cfg.scale_min, cfg.scale_max),
                                 cfg.flips, cfg.seed,
                                 keys=D.keys_for(cfg.kind, cfg.lesion_weight != 1.0, cfg.r2prime_key),
                                 p_lesion=cfg.p_lesion)
        norm_vols = vols
        vvols = D.load_cache(cfg.cache, "val")
        val_patches = D.fixed_patches(vvols, cfg.patch, cfg.val_patches)
        log(f"{len(vvols)} validation volumes ({', '.join(v.name for v in vvols)}), "
            f"{len(val_patches)} validation patches")
    if resume_state is not None:
        norm = resume_state["norm"]
    elif cfg.init_norm:
        norm = cfg.init_norm
    elif norm_vols is not None:
        heads = [v for v in norm_vols if v.kind != "shapes"]
        norm = D.normalisation_from_volumes(heads or norm_vols)
    else:
        norm = D.normalisation_from_volumes([D.Volume(shapes_patch(10 ** 7 + i, cfg.patch))
                                             for i in range(2)])
    (out / "norm.json").write_text(json.dumps(norm, indent=1))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))

    # ---- model / optimiser
    model = build_model(cfg.kind, cfg.width).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optim = torch.optim.RMSprop(model.parameters(), lr=cfg.lr)
    step, best, best_step, elapsed0 = 0, float("inf"), -1, 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        if resume_state.get("optim"):
            optim.load_state_dict(resume_state["optim"])
        step = int(resume_state["step"])
        best, best_step = float(resume_state["best"]), int(resume_state["best_step"])
        elapsed0 = float(resume_state.get("elapsed_s", 0.0))
    autocast_ctx = _autocast_factory(device, cfg.bf16)
    n_params = sum(p.numel() for p in model.parameters())
    jlog({"event": "start", "step": step, "kind": cfg.kind, "width": cfg.width, "params": n_params,
          "device": str(device), "threads": torch.get_num_threads(), "host": platform.node(),
          "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log(f"{cfg.kind} width {cfg.width}: {n_params} parameters on {device}; steps {step} -> {cfg.steps}")

    t_start = time.time()
    model.train()
    run_loss, run_n, t_log = 0.0, 0, time.time()
    last_losses = []

    def elapsed():
        return elapsed0 + time.time() - t_start

    def do_val():
        nonlocal best, best_step
        if not val_patches:
            return None
        v = validate_patches(model, val_patches, cfg.kind, norm, device, autocast_ctx, cfg.channels_last,
                             r2prime_key=cfg.r2prime_key)
        score = float(np.mean(list(v.values())))
        is_best = score < best
        if is_best:
            best, best_step = score, step
            save_checkpoint(out / "ckpt_best.pt", model, None, step, cfg, norm, best, best_step, elapsed())
        jlog({"event": "val", "step": step, "nrmse": v, "mean_nrmse": score, "best": best,
              "best_step": best_step, "elapsed_s": round(elapsed(), 1)})
        log(f"step {step}: val NRMSE " + " ".join(f"{k} {x:.1f}%" for k, x in v.items())
            + (" (best)" if is_best else ""))
        return v

    stop_reason = "steps"
    pf = None
    while step < cfg.steps:
        if pf is None:
            pf = _Prefetch(sampler, step, cfg.steps, cfg.batch)
        if (cfg.max_minutes and elapsed() - elapsed0 > cfg.max_minutes * 60) or \
                (cfg.stop_at and time.time() > cfg.stop_at):
            stop_reason = "time"
            break
        if cfg.refresh_every and step % cfg.refresh_every == 0 and isinstance(sampler, D.PatchSampler):
            new = D.load_cache(cfg.cache, "train", names_seen)
            if new:
                pf.close()
                names_seen |= {v.name for v in new}
                sampler.set_volumes(sampler.volumes + new)
                pf = _Prefetch(sampler, step, cfg.steps, cfg.batch)
                log(f"step {step}: +{len(new)} training volumes ({len(sampler.volumes)} in all)")
                jlog({"event": "volumes", "step": step, "n": len(sampler.volumes),
                      "names": sorted(names_seen)})
            if not val_patches:
                vvols = D.load_cache(cfg.cache, "val")
                val_patches = D.fixed_patches(vvols, cfg.patch, cfg.val_patches)
        for g in optim.param_groups:
            g["lr"] = _lr_at(cfg, step, time.time() - t_start, t_start)
        b = pf.get(step)
        x, y, t = to_tensors(b, cfg.kind, norm, device, cfg.channels_last, cfg.r2prime_key)
        loss, parts = compute_loss(model, x, y, t, cfg.kind, norm, cfg, autocast_ctx)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optim.step()
        step += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"loss is {lv} at step {step}")
        last_losses.append(lv)
        run_loss += lv
        run_n += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            dt = time.time() - t_log
            jlog({"event": "train", "step": step, "loss": run_loss / run_n, "parts": parts,
                  "lr": optim.param_groups[0]["lr"], "s_per_step": dt / run_n,
                  "elapsed_s": round(elapsed(), 1)})
            log(f"step {step}: loss {run_loss / run_n:.4f} ({dt / run_n:.3f} s/step)")
            run_loss, run_n, t_log = 0.0, 0, time.time()
        if cfg.val_every and step % cfg.val_every == 0:
            do_val()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save_checkpoint(ck_last, model, optim, step, cfg, norm, best, best_step, elapsed())
        if cfg.snapshot_every and step % cfg.snapshot_every == 0:
            save_checkpoint(out / f"ckpt_step{step}.pt", model, None, step, cfg, norm, best, best_step,
                            elapsed())
    if pf is not None:
        pf.close()
    if not (cfg.val_every and step % cfg.val_every == 0):
        do_val()
    save_checkpoint(ck_last, model, optim, step, cfg, norm, best, best_step, elapsed())
    if not (out / "ckpt_best.pt").exists():
        save_checkpoint(out / "ckpt_best.pt", model, None, step, cfg, norm, best, best_step, elapsed())
    summary = {"event": "end", "step": step, "stop": stop_reason, "best": best, "best_step": best_step,
               "elapsed_s": round(elapsed(), 1), "device": str(device)}
    jlog(summary)
    summary["last_losses"] = last_losses
    summary["norm"] = norm
    return summary


# --------------------------------------------------------------------------- evaluation / export
def evaluate_checkpoint(ckpt, cache, device="auto", bf16=False, tile=96):
    """Whole-volume metrics of a checkpoint on every validation volume (val_*) of a cache."""
    from ..network.inference import resolve_device
    dev = resolve_device(device)
    model, ck = model_from_checkpoint(ckpt, dev)
    kind, norm = ck["config"]["kind"], ck["norm"]
    ac = _autocast_factory(dev, bf16)
    res = {}
    for v in D.load_cache(cache, "val"):
        pred = infer_volume(model, v, kind, norm, dev, ac, tile=tile,
                            r2prime_key=ck["config"].get("r2prime_key", "r2p"))
        res[v.name] = volume_metrics(pred, v, kind)
    return res


def export_weights(ckpt, path, meta: Optional[dict] = None, dtype="float16"):
    """Write a checkpoint as safetensors (fp16 by default) via :func:`chisep.network.weights.save_weights`."""
    import torch

    from ..network.weights import save_weights

    model, ck = model_from_checkpoint(ckpt, "cpu")
    cfg = ck["config"]
    ins, outs = channels(cfg["kind"])
    norm = {k: [float(a) for a in ck["norm"][k]] for k in list(ins) + list(outs)}
    if dtype == "float16":
        model = model.half()
    m = {"trained_by": "chisep train (ChiSeparation project), on simulated data",
         "not_the_published_weights": "true", "steps": str(ck["step"]), "best_step": str(ck["best_step"]),
         "width": str(cfg["width"]), "seed": str(cfg["seed"]), "patch": str(cfg["patch"]),
         "batch": str(cfg["batch"]), "lr": str(cfg["lr"]), "cache": str(cfg.get("cache")),
         "r2prime_input": str(cfg.get("r2prime_key", "r2p")), "p_lesion": str(cfg.get("p_lesion", 0.0)),
         "lesion_weight": str(cfg.get("lesion_weight", 1.0)),
         "val_patch_mean_nrmse_percent": f"{ck['best']:.3f}", "train_elapsed_s": f"{ck['elapsed_s']:.0f}",
         "torch": torch.__version__}
    m.update({k: str(v) for k, v in (meta or {}).items()})
    save_weights(model, path, cfg["kind"], norm, m)
    return Path(path)
