"""Benchmark: chi-sepnet inference on a 1 mm whole brain (181 x 217 x 181, ellipsoid brain mask).

For the published-size network (width 32, ~22.6 M parameters) and the compact one (width 16):
wall time and peak memory (RSS of a fresh process per configuration) of ``predict_chisep`` whole
volume vs tiled (96^3 tiles, 16 voxels overlap), fp32 vs fp32+channels_last_3d vs bf16, against
onnxruntime (CPU provider, fp32) running the same network through the same chain in the same run;
the compact net's full R2' and R2* pipelines (``run_chisepnet``, all network passes + closed-form
QSM); NRMSE (%, inside the mask) of every map against the fp32 result of the same net; and a
CUDA section when a GPU is present.

Networks are randomly initialised (timing and numerics of the engine only; no trained accuracy).
Targets on two CPU cores: width 32 at least 2x faster than onnxruntime fp32; the compact R2'
pipeline under 5 s.

    python benchmarks/bench_inference.py [--only w16] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPE = (181, 217, 181)
SEMI = (70, 86, 66)  # ellipsoid brain, mm


def inputs():
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in SHAPE], indexing="ij")
    r = sum((a / s) ** 2 for a, s in zip(g, SEMI))
    mask = r < 1
    rng = np.random.default_rng(0)
    f = (0.01 * np.sin(g[0] / 5) * np.cos(g[1] / 7) + 0.002 * rng.standard_normal(SHAPE, dtype=np.float32)) * mask
    q = (2 * f + 0.01 * np.cos(g[2] / 6)) * mask
    r2p = (6 + 3 * np.cos(g[2] / 6) + rng.standard_normal(SHAPE, dtype=np.float32)) * mask
    r2s = (r2p + 12 + 2 * np.sin(g[0] / 9)) * mask
    return f.astype(np.float32), r2p.astype(np.float32), q.astype(np.float32), r2s.astype(np.float32), mask


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def nets(width, tmp):
    import torch

    from chisep.network import weights as W
    from chisep.network.unet import ChiSepUNet

    torch.manual_seed(width)
    norm = dict(W.PUBLISHED_NORMALISATION)
    mk = {"chisepnet": ("chisepnet-r2prime", 3, 2), "r2prime": ("r2prime-from-r2star", 1, 1), "qsm": ("qsm", 1, 1)}
    out = {}
    for k, (kind, ci, co) in mk.items():
        m = ChiSepUNet(ci, co, width).eval()
        out[k] = W.WeightSet(m, kind, norm, width=width)
    return out


def child(cfg, tmp):
    """One configuration in this (fresh) process; prints a JSON line."""
    import torch

    from chisep.network import inference as I
    from chisep.network import weights as W

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    f, r2p, q, r2s, mask = inputs()
    ws = nets(cfg["width"], tmp)
    base = rss_mb()
    dev = cfg.get("device", "cpu")
    prec = cfg.get("precision", "fp32")
    tile = cfg.get("tile")
    res = {"name": cfg["name"]}
    if cfg["engine"] == "onnxruntime":
        path = os.path.join(tmp, f"w{cfg['width']}.onnx")
        W.export_onnx(ws["chisepnet"].model, path, dynamic=True)
        net = W.load_weights(path)
        net.norm = ws["chisepnet"].norm
        ws["chisepnet"] = net
        base = rss_mb()
    # warm-up on a small volume (allocator, kernels, onnxruntime session)
    small = tuple(slice(60, 124) for _ in range(3))
    I.predict_chisep(ws["chisepnet"], f[small], r2p[small], q[small], mask[small], np.eye(4), device=dev, precision=prec)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    if cfg["engine"] in ("torch", "onnxruntime"):
        out = I.predict_chisep(ws["chisepnet"], f, r2p, q, mask, np.eye(4), device=dev, precision=prec, tile_size=tile)
    elif cfg["engine"] == "pipeline-r2prime":
        out = I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p, weights={"chisepnet": ws["chisepnet"]},
                              device=dev, precision=prec, tile_size=tile)
        res["timings_s"] = out["timings_s"]
    elif cfg["engine"] == "pipeline-r2prime-userqsm":
        out = I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p, qsm_ppm=q,
                              weights={"chisepnet": ws["chisepnet"]}, device=dev, precision=prec, tile_size=tile)
        res["timings_s"] = out["timings_s"]
    elif cfg["engine"] == "pipeline-r2prime-qsmnet":
        out = I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p,
                              weights={"chisepnet": ws["chisepnet"], "qsm": ws["qsm"]}, device=dev, precision=prec,
                              tile_size=tile)
        res["timings_s"] = out["timings_s"]
    elif cfg["engine"] == "pipeline-r2star":
        out = I.run_chisepnet("chisepnet-r2star", f, mask, np.eye(4), r2star_hz=r2s, qsm_ppm=q,
                              weights={"chisepnet": ws["chisepnet"], "r2prime": ws["r2prime"]}, device=dev,
                              precision=prec, tile_size=tile)
        res["timings_s"] = out["timings_s"]
    if dev == "cuda":
        torch.cuda.synchronize()
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["time_s"] = time.perf_counter() - t
    res["peak_rss_mb"] = rss_mb()
    res["base_rss_mb"] = base
    res["precision_used"] = prec
    np.save(os.path.join(tmp, cfg["name"] + ".npy"), np.stack([out["chi_para"], out["chi_dia"]]))
    print("RESULT " + json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["w32", "w16", "cuda"], help="run one section")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child), a.tmp)
        return
    import torch

    from chisep.network.inference import cpu_bf16_supported

    bf = "bf16" if cpu_bf16_supported() else "channels_last"
    cfgs = []
    for w in (32, 16):
        if a.only in (None, f"w{w}"):
            cfgs += [
                dict(name=f"w{w}-fp32-whole", width=w, engine="torch", precision="fp32"),
                dict(name=f"w{w}-channels_last-whole", width=w, engine="torch", precision="channels_last"),
                dict(name=f"w{w}-{bf}-whole", width=w, engine="torch", precision=bf),
                dict(name=f"w{w}-{bf}-tiled96", width=w, engine="torch", precision=bf, tile=96),
                dict(name=f"w{w}-onnxruntime-fp32-whole", width=w, engine="onnxruntime", precision="fp32"),
            ]
    if a.only in (None, "w16"):
        cfgs += [dict(name="w16-pipeline-R2prime(user QSM)-auto", width=16, engine="pipeline-r2prime-userqsm", precision="auto"),
                 dict(name="w16-pipeline-R2prime(closed-form QSM)-auto", width=16, engine="pipeline-r2prime", precision="auto"),
                 dict(name="w16-pipeline-R2prime(QSM net)-auto", width=16, engine="pipeline-r2prime-qsmnet", precision="auto"),
                 dict(name="w16-pipeline-R2star-auto", width=16, engine="pipeline-r2star", precision="auto")]
    if torch.cuda.is_available() and a.only in (None, "cuda"):
        for w in (32, 16):
            cfgs += [dict(name=f"cuda-w{w}-fp32-whole", width=w, engine="torch", precision="fp32", device="cuda"),
                     dict(name=f"cuda-w{w}-auto-whole", width=w, engine="torch", precision="auto", device="cuda")]
    print(f"torch {torch.__version__}, threads {a.threads or torch.get_num_threads()}, cpu bf16: {cpu_bf16_supported()}, "
          f"volume {SHAPE} 1 mm, ellipsoid mask semi-axes {SEMI} mm; random-init nets (timing only); "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in cfgs:
            if a.threads:
                c["threads"] = a.threads
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(c), "--tmp", tmp],
                               capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"{c['name']:48s} FAILED rc={p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[0][7:])
            results[c["name"]] = r
            ref = os.path.join(tmp, f"{c['name'].split('-')[0]}-fp32-whole.npy")
            if c["name"].startswith("cuda"):
                ref = os.path.join(tmp, f"w{c['width']}-fp32-whole.npy")
            err = ""
            if os.path.exists(ref) and "pipeline" not in c["name"]:
                from chisep.metrics import nrmse
                m = inputs()[-1]
                x, y = np.load(os.path.join(tmp, c["name"] + ".npy")), np.load(ref)
                err = f"  NRMSE vs fp32: para {nrmse(x[0], y[0], m):.3f} %, dia {nrmse(x[1], y[1], m):.3f} %"
            gpu = f", GPU peak {r['gpu_peak_mb']:.0f} MiB" if "gpu_peak_mb" in r else ""
            extra = ""
            if "timings_s" in r:
                extra = "  [" + ", ".join(f"{k} {v:.2f}" for k, v in r["timings_s"].items()) + "]"
            print(f"{c['name']:48s} {r['time_s']:7.2f} s  peak RSS {r['peak_rss_mb']:6.0f} MiB "
                  f"(+{r['peak_rss_mb'] - r['base_rss_mb']:.0f} over baseline){gpu}{err}{extra}", flush=True)
    for w in (32, 16):
        o = results.get(f"w{w}-onnxruntime-fp32-whole")
        best = min((r["time_s"], n) for n, r in results.items() if n.startswith(f"w{w}-") and "onnx" not in n
                   and "pipeline" not in n) if o else None
        if o and best:
            print(f"width {w}: fastest torch ({best[1]}) {best[0]:.2f} s vs onnxruntime fp32 {o['time_s']:.2f} s "
                  f"-> {o['time_s'] / best[0]:.2f}x")


if __name__ == "__main__":
    main()
