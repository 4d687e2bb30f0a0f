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

    python benchmarks/bench_inference.py [--only w32|w16] [--isa native|avx2] [--reps 3] [--threads N]
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
if os.environ.get("CHISEP_BENCH_SMOKE"):  # a quick check of the benchmark itself, not a measurement
    SHAPE, SEMI = (61, 73, 61), (23, 29, 22)


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
    small = tuple(slice(max(0, n // 2 - 32), n // 2 + 32) for n in SHAPE)
    tw = time.perf_counter()
    I.predict_chisep(ws["chisepnet"], f[small], r2p[small], q[small], mask[small], np.eye(4), device=dev, precision=prec)
    res["prepare_s"] = time.perf_counter() - tw  # BatchNorm folding, fusion, engine probe, warm-up
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    if cfg["engine"] in ("torch", "onnxruntime"):
        out = I.predict_chisep(ws["chisepnet"], f, r2p, q, mask, np.eye(4), device=dev, precision=prec, tile_size=tile,
                               max_memory_gb=cfg.get("max_memory_gb"))
        res["engine"] = I._runner(ws["chisepnet"], dev, prec).info()
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
    res["cpu"] = I.cpu_features()
    np.save(os.path.join(tmp, cfg["name"] + ".npy"), np.stack([out["chi_para"], out["chi_dia"]]))
    print("RESULT " + json.dumps(res), flush=True)


#: environment that emulates an AVX2-only CPU of the same machine: oneDNN, MKL and ATen's own kernels
#: limited to AVX2 (so no AVX-512 and no bf16). onnxruntime's MLAS has its own CPU dispatch and is NOT
#: limited by these: in the emulated class it still uses AVX-512, which favours onnxruntime.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["w32", "w16", "cuda"], help="run one section")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="machine class: this CPU as it is, or an AVX2-only CPU emulated (see AVX2_ENV)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, interleaved; medians reported")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="memory budget of the tiled configuration (default 1.5 with bf16, 2.0 without)")
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child), a.tmp)
        return
    env = dict(os.environ, **(AVX2_ENV if a.isa == "avx2" else {}))
    probe = subprocess.run([sys.executable, "-c", "import json; from chisep.network import inference as I; "
                            "print(json.dumps(I.cpu_features()))"], capture_output=True, text=True, env=env)
    feats = json.loads(probe.stdout.strip().splitlines()[-1])
    from chisep.network.inference import cpu_summary

    bf16 = feats["bf16_native"]
    tag = ("native" if a.isa == "native" else "emulated AVX2") + (", bf16" if bf16 else ", no bf16")
    budget = a.max_memory_gb or (1.5 if bf16 else 2.0)
    cfgs = []
    for w in (32, 16):
        if a.only in (None, f"w{w}"):
            cfgs += [dict(name=f"w{w}-fp32-whole", width=w, engine="torch", precision="fp32", ref=True)]
            if not bf16:  # torch's own fp32 path (auto may pick onnxruntime here)
                cfgs += [dict(name=f"w{w}-channels_last-whole", width=w, engine="torch", precision="channels_last")]
            cfgs += [dict(name=f"w{w}-auto-whole", width=w, engine="torch", precision="auto"),
                     dict(name=f"w{w}-auto-tiled{budget:g}GB", width=w, engine="torch", precision="auto",
                          max_memory_gb=budget),
                     dict(name=f"w{w}-onnxruntime-fp32-whole", width=w, engine="onnxruntime", precision="fp32")]
    if a.only in (None, "w16"):
        cfgs += [dict(name="w16-pipeline-R2prime(user QSM)-auto", width=16, engine="pipeline-r2prime-userqsm", precision="auto"),
                 dict(name="w16-pipeline-R2prime(closed-form QSM)-auto", width=16, engine="pipeline-r2prime", precision="auto"),
                 dict(name="w16-pipeline-R2star-auto", width=16, engine="pipeline-r2star", precision="auto")]
    import torch

    if torch.cuda.is_available() and a.only in (None, "cuda"):
        for w in (32, 16):
            cfgs += [dict(name=f"cuda-w{w}-fp32-whole", width=w, engine="torch", precision="fp32", device="cuda"),
                     dict(name=f"cuda-w{w}-auto-whole", width=w, engine="torch", precision="auto", device="cuda")]
    print(f"machine class: {tag}; CPU: {cpu_summary(feats)}"
          + (f"; emulated with {' '.join(f'{k}={v}' for k, v in AVX2_ENV.items())} (onnxruntime's MLAS "
             f"ignores these and still uses AVX-512)" if a.isa == "avx2" else ""))
    print(f"torch {torch.__version__}, volume {SHAPE} 1 mm, ellipsoid mask semi-axes {SEMI} mm; random-init nets "
          f"(timing only); {a.reps} interleaved repetitions (fresh process each), medians; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)", flush=True)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for c in cfgs:
                if c.get("ref") and rep > 0:  # the fp32 reference (numerics only) runs once
                    continue
                if a.threads:
                    c["threads"] = a.threads
                p = subprocess.run([sys.executable, __file__, "--child", json.dumps(c), "--tmp", tmp],
                                   capture_output=True, text=True, env=env)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    print(f"{c['name']:44s} rep {rep + 1} FAILED rc={p.returncode}: {p.stderr.strip().splitlines()[-1:]}",
                          flush=True)
                    continue
                r = json.loads(line[0][7:])
                r["load"] = os.getloadavg()[0]
                if rep == 0:
                    r["npy"] = os.path.join(tmp, c["name"] + ".npy")
                    os.replace(r["npy"], r["npy"] + ".keep.npy")
                    r["npy"] += ".keep.npy"
                runs.setdefault(c["name"], []).append(r)
                print(f"  rep {rep + 1} {c['name']:44s} {r['time_s']:7.2f} s (load {r['load']:.1f})", flush=True)
        m = inputs()[-1]
        results = {}
        print()
        for c in cfgs:
            rs = runs.get(c["name"])
            if not rs:
                continue
            med = float(np.median([r["time_s"] for r in rs]))
            r0 = rs[0]
            results[c["name"]] = med
            ref = runs.get(f"w{c['width']}-fp32-whole")
            err = ""
            if ref and "pipeline" not in c["name"]:
                x, y = np.load(r0["npy"]), np.load(ref[0]["npy"])
                from chisep.metrics import nrmse
                err = f"  NRMSE vs fp32: para {nrmse(x[0], y[0], m):.4f} %, dia {nrmse(x[1], y[1], m):.4f} %"
            eng = (r0.get("engine") or {}).get("engine", "")
            extra = ""
            if "timings_s" in r0:
                extra = "  [" + ", ".join(f"{k} {v:.2f}" for k, v in r0["timings_s"].items()) + "]"
            print(f"{c['name']:40s} {med:7.2f} s (median of {len(rs)}: {', '.join('%.1f' % r['time_s'] for r in rs)})"
                  f"  peak RSS {r0['peak_rss_mb']:5.0f} MiB (+{r0['peak_rss_mb'] - r0['base_rss_mb']:.0f})"
                  f"  engine {eng or c['engine']}{err}{extra}  [{tag}]", flush=True)
    for w in (32, 16):
        o = results.get(f"w{w}-onnxruntime-fp32-whole")
        au = results.get(f"w{w}-auto-whole")
        if o and au:
            print(f"width {w}: auto whole {au:.2f} s vs onnxruntime fp32 {o:.2f} s -> {o / au:.2f}x  [{tag}; {cpu_summary(feats)}]")
        for n, t in results.items():
            if n.startswith(f"w{w}-auto-tiled") and au:
                print(f"width {w}: {n} {t:.2f} s vs whole {au:.2f} s -> {t / au:.2f}x of whole  [{tag}]")
    for n in ("cuda-w32-auto-whole", "cuda-w16-auto-whole"):
        if n not in results:
            print(f"{n}: not measured (no CUDA device on this machine)")


if __name__ == "__main__":
    main()
