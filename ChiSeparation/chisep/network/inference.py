"""chi-sepnet inference on any volume: geometry, padding, z-scoring, whole or tiled runs, CPU/GPU.

The chain (docs/DESIGN.md, "Network") for every network pass:

1. rotate/resample to 1 mm isotropic with B0 along the third axis (:mod:`chisep.geometry`; nothing
   is resampled when the data already are);
2. take the mask's bounding box plus ``MARGIN`` voxels and **pad** it with zeros to multiples of 16
   (the voxels left out lie outside the mask, where every input channel is zero after masking, so
   nothing the network sees is cropped; and the result does not depend on how much empty
   background the input volume had);
3. z-score each input channel with the weight set's constants, multiply by the mask;
4. run the network on the whole volume or on overlapping tiles blended with cosine ramps;
5. de-normalise ``y * std + mean``, clip below 0, mask, and bring the maps back onto the input grid.

Precision: ``fp32`` (always available), ``channels_last`` (fp32 with channels_last_3d), ``bf16``
(bf16 weights and activations, fp32 accumulation, channels_last_3d), ``fp16`` (CUDA autocast) and ``auto``: bf16 where the
device supports it natively (CPUs with AVX512-BF16/AMX, CUDA with bf16), else fp32
(channels_last_3d on CPU). BatchNorm is folded into the convolutions for inference; with
channels_last/bf16 on the CPU each conv + ReLU runs as one oneDNN call (checked on a probe).
"""
from __future__ import annotations

import copy
import os
import platform
import shutil
import tempfile
import time
from contextlib import nullcontext
from typing import Callable, Optional

import numpy as np
import torch

from .. import geometry
from ..io import InputError
from ..options import DEVICES, NETWORK_METHODS, PRECISIONS
from ..physics import b0_direction_from_affine, voxel_size_from_affine
from .unet import fuse_batchnorm, fuse_relu
from .weights import BUILTIN_R2STAR_CHISEPNET, WeightSet, builtin_weights_dir, load_builtin, load_weights

ProgressFn = Optional[Callable[[float, str], None]]

MULTIPLE = 16
#: voxels of empty background kept around the mask's bounding box
MARGIN = 8
#: side of the probe volume on which ``auto`` times torch against onnxruntime (CPUs without bf16)
PROBE_SIDE = 48


# --------------------------------------------------------------------------- device / precision
def resolve_device(device="auto") -> torch.device:
    """The torch device for a :data:`chisep.options.DEVICES` choice (``auto``: cuda > mps > cpu) or an
    explicit torch device name (``cuda:1``); the one device resolution of inference and training."""
    name = "auto" if device in (None, "") else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {device!r} requested but Apple MPS is not available; use --device cpu or auto")
    return dev


def cpu_bf16_supported() -> bool:
    """True when this CPU runs bf16 convolutions natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision, dev: torch.device) -> str:
    p = "auto" if precision in (None, "") else str(precision).lower()
    if p not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if dev.type == "cpu":
            return "bf16" if cpu_bf16_supported() else "channels_last"
        if dev.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "fp32"
    if p == "fp16" and dev.type != "cuda":
        raise InputError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if p == "bf16" and dev.type == "cpu" and not cpu_bf16_supported():
        raise InputError("this CPU has no native bf16 support (AVX512-BF16/AMX); use --precision fp32")
    return p


def cpu_features() -> dict:
    """The CPU model and the vector features inference depends on (for the report and benchmarks):
    AVX2, AVX-512, AVX512-BF16, AMX from the CPU's flags; ``bf16_native`` is whether oneDNN will run
    bf16 here (it honours ``ONEDNN_MAX_CPU_ISA``, recorded as ``isa_limit``)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if model and flags:
                    break
    except OSError:
        pass
    try:
        cap = str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        cap = None
    return {"model": model or platform.processor() or platform.machine(), "avx2": "avx2" in flags,
            "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": bool({"amx_tile", "amx_bf16"} & flags), "bf16_native": cpu_bf16_supported(),
            "isa_limit": os.environ.get("ONEDNN_MAX_CPU_ISA") or None, "aten_capability": cap,
            "threads": torch.get_num_threads()}


_FEATURE_NAMES = (("avx2", "AVX2"), ("avx512", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx", "AMX"))


def cpu_summary(f: Optional[dict] = None) -> str:
    """One line: the CPU model and features (printed beside every benchmark figure)."""
    f = f or cpu_features()
    feats = ", ".join(n for k, n in _FEATURE_NAMES if f.get(k)) or "no AVX2"
    limit = f"; oneDNN ISA limited to {f['isa_limit']}" if f.get("isa_limit") else ""
    return (f"{f['model']} ({feats}; bf16 {'native' if f['bf16_native'] else 'off'}{limit}; "
            f"{f['threads']} threads)")


class _Runner:
    """A weight set's network prepared for one device/precision: ``(N, C, X, Y, Z)`` numpy -> numpy."""

    def __init__(self, ws: WeightSet, dev: torch.device, precision: str, auto: bool = False):
        self.ws, self.dev, self.precision = ws, dev, precision
        self.onnx = ws.is_onnx
        self.fixed_shape = ws.model.fixed_shape if self.onnx else None
        self.width = ws.width or getattr(ws.model, "width", None) or 32
        self.out_channels = len(ws.outputs)
        if self.onnx:
            self.model = ws.model
            self.precision = "fp32"
            self.dev = torch.device("cpu")
            self.engine, self.probe_s, self.ort = "onnxruntime-fp32 (weights file)", None, None
            return
        m = copy.deepcopy(ws.model).float().eval()
        fuse_batchnorm(m)
        self.channels_last = precision in ("channels_last", "bf16", "fp16")
        m = m.to(dev)
        # bf16: weights cast once (BatchNorm already folded): faster than autocast on the CPU
        # (benchmarks/bench_inference.py), same arithmetic (fp32 accumulation, bf16 activations)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        m = m.to(self.dtype)
        if self.channels_last:
            m = m.to(memory_format=torch.channels_last_3d)
        for p in m.parameters():
            p.requires_grad_(False)
        # oneDNN conv+ReLU in one call (CPU, channels_last / bf16; fp32 stays the plain reference)
        self.fused_relu = dev.type == "cpu" and self.channels_last and fuse_relu(m)
        self.model = m
        self.engine = f"torch-{self.precision}" + ("+fused-relu" if self.fused_relu else "")
        self.probe_s = None
        self.ort = None
        if auto and dev.type == "cpu" and self.precision != "bf16":
            self._choose_cpu_engine()

    def _choose_cpu_engine(self, side: int = PROBE_SIDE):
        """fp32 on a CPU without native bf16: time torch (folded BatchNorm, channels_last, fused
        conv+ReLU) against onnxruntime (the same folded network exported to ONNX) on a probe volume
        and keep the faster; the times are recorded (``probe_s``)."""
        tmp = tempfile.mkdtemp(prefix="chisep-onnx-")
        try:
            from .weights import OnnxNet, export_onnx
            path = os.path.join(tmp, "net.onnx")
            export_onnx(self.model, path, dynamic=True)
            ort_net = OnnxNet(path, threads=torch.get_num_threads())
        except Exception:  # onnxruntime missing or the export failed: torch it is
            return
        finally:  # the session holds the model in memory: the exported file is not needed again
            shutil.rmtree(tmp, ignore_errors=True)
        g = np.random.default_rng(0)
        x = g.standard_normal((1, self.model.in_channels, side, side, side)).astype(np.float32)
        times = {}
        for name, fn in (("torch", self._torch_call), ("onnxruntime", ort_net)):
            fn(x)  # warm-up (kernel selection, allocator, session)
            t = time.perf_counter()
            fn(x)
            times[name] = time.perf_counter() - t
        self.probe_s = {k: round(v, 4) for k, v in times.items()}
        if times["onnxruntime"] < times["torch"]:
            self.ort = ort_net
            self.engine = "onnxruntime-fp32"
            self.precision = "fp32"

    def info(self) -> dict:
        """Engine record for the report: engine, precision, device, probe times, the CPU's features."""
        d = {"engine": self.engine, "precision": self.precision, "device": str(self.dev)}
        if self.probe_s:
            d["probe_s"] = dict(self.probe_s, volume=[PROBE_SIDE] * 3)
        if self.dev.type == "cpu":
            d["cpu"] = cpu_features()
        elif self.dev.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.dev)
        return d

    def _autocast(self):
        if self.precision == "fp16":
            return torch.autocast(device_type=self.dev.type, dtype=torch.float16)
        return nullcontext()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.onnx:
            return self.model(x)
        if self.ort is not None:
            return self.ort(x)
        return self._torch_call(x)

    def _torch_call(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev).to(self.dtype)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), self._autocast():
            y = self.model(t)
        return y.float().contiguous().cpu().numpy()


def _runner(ws: WeightSet, device="auto", precision="auto") -> _Runner:
    if ws.is_onnx:
        key = ("onnx",)
    else:
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        key = (str(dev), prec, precision in (None, "", "auto"))
    cache = ws.__dict__.setdefault("_runners", {})
    if key not in cache:
        cache.clear()  # keep at most one prepared copy per weight set
        auto = precision in (None, "", "auto")
        cache[key] = _Runner(ws, torch.device("cpu"), "fp32") if ws.is_onnx else _Runner(ws, dev, prec, auto)
    return cache[key]


# --------------------------------------------------------------------------- window / tiles
def _window(mask: np.ndarray, min_shape=None):
    """Start and size of the padded window around the mask (multiples of 16, >= min_shape)."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        raise InputError("the mask is empty: nothing to separate")
    lo = np.array([i.min() for i in idx]) - MARGIN
    hi = np.array([i.max() for i in idx]) + 1 + MARGIN
    size = hi - lo
    padded = -(-size // MULTIPLE) * MULTIPLE
    if min_shape is not None:
        padded = np.maximum(padded, np.asarray(min_shape))
    start = lo - (padded - size) // 2
    return start, padded


def _overlap(start, size, shape):
    """Slices (in the volume, in the window) where a window at ``start`` of ``size`` meets a volume of
    ``shape``; ``None`` when they do not overlap."""
    vol_sl, win_sl = [], []
    for a in range(3):
        s0, s1 = max(start[a], 0), min(start[a] + size[a], shape[a])
        if s1 <= s0:
            return None
        vol_sl.append(slice(s0, s1))
        win_sl.append(slice(s0 - start[a], s1 - start[a]))
    return tuple(vol_sl), tuple(win_sl)


def _extract(vol: np.ndarray, start, size) -> np.ndarray:
    """vol[start:start+size] with zeros wherever the window leaves the array."""
    out = np.zeros(tuple(int(s) for s in size), dtype=np.float32)
    ov = _overlap(start, size, vol.shape)
    if ov is not None:
        out[ov[1]] = vol[ov[0]]
    return out


def _insert(out_shape, win: np.ndarray, start) -> np.ndarray:
    """Inverse of :func:`_extract` for a (C, ...) window: a zero volume with the window put back."""
    res = np.zeros((win.shape[0],) + tuple(out_shape), dtype=np.float32)
    ov = _overlap(start, win.shape[1:], out_shape)
    if ov is not None:
        res[(slice(None),) + ov[0]] = win[(slice(None),) + ov[1]]
    return res


def _tile_starts(n: int, t: int, ov: int):
    if n <= t:
        return [0]
    k = int(np.ceil((n - ov) / (t - ov)))
    return sorted({int(round(s)) for s in np.linspace(0, n - t, k)})


def _ramp_weight(n_tile: int, at_start: bool, at_end: bool, ov: int) -> np.ndarray:
    w = np.ones(n_tile, dtype=np.float32)
    if ov > 0:
        r = (0.5 - 0.5 * np.cos(np.pi * (np.arange(ov) + 0.5) / ov)).astype(np.float32)
        if not at_start:
            w[:ov] = np.minimum(w[:ov], r)
        if not at_end:
            w[-ov:] = np.minimum(w[-ov:], r[::-1])
    return w


def _run_tiled(run: _Runner, x: np.ndarray, tile, overlap: int, progress: ProgressFn, mask=None,
               batch: int = 1) -> np.ndarray:
    """Overlapping tiles (size ``tile`` per axis) blended with cosine ramps over ``overlap`` voxels.

    Tiles holding no voxel of ``mask`` (the window's mask) are not run: every map is masked
    afterwards, and a mask voxel's value only blends tiles that contain it, so skipping them
    changes no output. ``batch`` tiles of equal shape go through the network in one call.
    """
    shp = x.shape[1:]
    tile = [min(int(t), int(s)) for t, s in zip(tile, shp)]
    ov = [max(0, min(int(overlap), t // 2)) for t in tile]
    starts = [_tile_starts(s, t, o) for s, t, o in zip(shp, tile, ov)]
    boxes = []
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                sl = (slice(i, i + tile[0]), slice(j, j + tile[1]), slice(k, k + tile[2]))
                if mask is None or mask[sl].any():
                    boxes.append(((i, j, k), sl))
    out = None
    wsum = np.zeros(shp, dtype=np.float32)
    total = len(boxes)
    batch = max(1, int(batch))
    done = 0
    for b0 in range(0, total, batch):
        group = boxes[b0:b0 + batch]
        ys = run(np.stack([x[(slice(None),) + sl] for _, sl in group]))
        for (st, sl), y in zip(group, ys):
            if out is None:
                out = np.zeros((y.shape[0],) + shp, dtype=np.float32)
            w = [_ramp_weight(tile[a], s == 0, s + tile[a] >= shp[a], ov[a]) for a, s in enumerate(st)]
            wt = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
            out[(slice(None),) + sl] += y * wt
            wsum[sl] += wt
            done += 1
            if progress:
                progress(done / total, f"tile {done}/{total}")
    if out is None:  # no tile met the mask (cannot happen for a window around a non-empty mask)
        return np.zeros((run.out_channels,) + shp, dtype=np.float32)
    return out / np.maximum(wsum, 1e-6)


def _tile_layout(counts, shape, overlap):
    """Tile size per axis (multiple of 16) when ``counts[a]`` tiles overlapping by ``overlap`` cover
    ``shape[a]``."""
    return tuple(int(s) if n <= 1 else int(-(-(-(-(s + (n - 1) * overlap) // n)) // MULTIPLE) * MULTIPLE)
                 for n, s in zip(counts, shape))


def tile_shape_for_memory(max_memory_gb: float, width: int, precision: str, window_shape, in_channels: int = 3,
                          out_channels: int = 2, overlap: int = 16):
    """The tile shape (X, Y, Z; multiples of 16) whose network pass fits in ``max_memory_gb`` and that
    computes the fewest voxels in all (tiles x tile volume: overlap is paid for), or None when the
    whole window fits in one pass. Tiles need not be cubes: splitting a brain along one or two axes
    wastes far less on overlaps than cubes do."""
    side = tile_for_memory(max_memory_gb, width, precision, window_shape, in_channels, out_channels)
    if side is None:
        return None
    bpv = BYTES_PER_VOXEL_PER_WIDTH.get(precision, 36) * int(width or 32)
    budget = float(max_memory_gb) * 2 ** 30
    nvox = float(np.prod(window_shape))
    avail = budget - 4 * 700.0 * int(width or 32) ** 2 - 4.0 * nvox * (in_channels + 2 * out_channels + 1)
    cap = max(avail / bpv, float((2 * MULTIPLE) ** 3), float(side) ** 3)
    best = None
    rng = [range(1, max(1, -(-int(s) // MULTIPLE)) + 1) for s in window_shape]
    for nx in rng[0]:
        for ny in rng[1]:
            for nz in rng[2]:
                t = _tile_layout((nx, ny, nz), window_shape, overlap)
                if min(t) < 2 * MULTIPLE and any(tt < s for tt, s in zip(t, window_shape)):
                    continue
                if float(np.prod(t)) > cap:
                    continue
                cost = (float(np.prod([n * tt for n, tt in zip((nx, ny, nz), t)])), nx * ny * nz)
                if best is None or cost < best[0]:
                    best = (cost, t)
    return best[1] if best else (side, side, side)


#: activation bytes per voxel per unit of width at inference (measured peak RSS on CPU: ~27-33 w
#: bytes in fp32, less in bf16; rounded up for headroom)
BYTES_PER_VOXEL_PER_WIDTH = {"fp32": 36, "channels_last": 36, "fp16": 18, "bf16": 18}


def tile_for_memory(max_memory_gb: float, width: int, precision: str, window_shape, in_channels: int = 3,
                    out_channels: int = 2) -> Optional[int]:
    """The tile side (a multiple of 16, at least 32) whose network pass fits in ``max_memory_gb``
    together with the window arrays, or None when the whole window fits in one pass."""
    if max_memory_gb is None:
        return None
    budget = float(max_memory_gb) * 2 ** 30
    if not np.isfinite(budget) or budget <= 0:
        raise InputError(f"max_memory_gb must be a positive number of GiB, got {max_memory_gb!r}")
    w = int(width or 32)
    bpv = BYTES_PER_VOXEL_PER_WIDTH.get(precision, 36) * w
    nvox = float(np.prod(window_shape))
    params = 4 * 700.0 * w * w  # ~22.6 M fp32 parameters at width 32
    # the window's own arrays: inputs, outputs, blending accumulators (float32)
    fixed = params + 4.0 * nvox * (in_channels + 2 * out_channels + 1)
    avail = budget - fixed
    if avail >= bpv * nvox:
        return None
    side = int((max(avail, 0.0) / bpv) ** (1.0 / 3.0)) // MULTIPLE * MULTIPLE
    return max(2 * MULTIPLE, side)


def _run_window(run: _Runner, x: np.ndarray, tile_size, overlap, progress: ProgressFn,
                max_memory_gb=None, mask=None) -> np.ndarray:
    """x: (C, X, Y, Z) padded window -> (C_out, X, Y, Z). ``tile_size``: cubic tiles of that side;
    ``max_memory_gb``: the cheapest tile shape that fits (:func:`tile_shape_for_memory`)."""
    if run.fixed_shape is not None:
        return _run_tiled(run, x, run.fixed_shape, overlap, progress, mask)
    tile = None
    if tile_size:
        t = max(MULTIPLE, -(-int(tile_size) // MULTIPLE) * MULTIPLE)
        tile = (t, t, t)
    elif max_memory_gb is not None:
        tile = tile_shape_for_memory(max_memory_gb, run.width, run.precision, x.shape[1:], x.shape[0],
                                     run.out_channels, overlap)
    if tile is not None and any(s > t for s, t in zip(x.shape[1:], tile)):
        return _run_tiled(run, x, tile, overlap, progress, mask)
    try:
        y = run(x[None])[0]
    except torch.OutOfMemoryError:
        if run.dev.type != "cuda":
            raise
        torch.cuda.empty_cache()
        return _run_tiled(run, x, (128, 128, 128), overlap, progress, mask)
    if progress:
        progress(1.0, "network done")
    return y


def _net_pass(ws: WeightSet, channels: dict, mask: np.ndarray, device, precision, tile_size, overlap,
              progress: ProgressFn, max_memory_gb=None) -> dict:
    """One network pass in network space. ``channels``: input name -> volume in the network's
    physical units (ppm; R2'/Dr...). Returns output name -> de-normalised map (not clipped)."""
    run = _runner(ws, device, precision)
    start, size = _window(mask > 0, run.fixed_shape)
    m = _extract(mask > 0, start, size)
    xs = []
    for name in ws.inputs:
        mean, std = ws.norm[name]
        xs.append((_extract(channels[name], start, size) - mean) / std * m)
    x = np.stack(xs).astype(np.float32)
    y = _run_window(run, x, tile_size, overlap, progress, max_memory_gb, m > 0)
    out = {}
    for i, name in enumerate(ws.outputs):
        mean, std = ws.norm[name]
        out[name] = _insert(mask.shape, (y[i] * std + mean)[None], start)[0]
    return out


def _geometry_in(vols, mask, affine, b0_dir):
    v = dict(vols)
    v["mask"] = (np.asarray(mask) > 0).astype(np.float32)
    for k, a in v.items():
        if np.shape(a) != np.shape(mask) or np.ndim(a) != 3:
            raise InputError(f"{k}: shape {np.shape(a)} differs from the mask's {np.shape(mask)} (3-D volumes needed)")
    return geometry.to_network_space(v, affine, b0_dir=b0_dir)


def _geometry_out(maps, tr, mask_in):
    back = geometry.from_network_space(maps, tr, weight=tr.net_mask)
    m = np.asarray(mask_in) > 0
    return {k: (np.asarray(v, np.float32) * m).astype(np.float32) for k, v in back.items()}


def _clip_mask(v, m):
    return (np.clip(v, 0, None) * (m > 0)).astype(np.float32)


# --------------------------------------------------------------------------- public API
def predict_chisep(ws: WeightSet, local_field_ppm, r2prime_hz, qsm_ppm, mask, affine, b0_dir=None,
                   device="auto", precision="auto", tile_size=None, overlap: int = 16,
                   progress: ProgressFn = None, max_memory_gb: Optional[float] = None) -> dict:
    """chi-sepnet-R2': local field (ppm), R2' (Hz) and a QSM (ppm) -> chi_para, chi_dia (|chi_dia|),
    chi_total (ppm) on the input grid (float32, zero outside ``mask``).

    ``tile_size`` (voxels, rounded up to a multiple of 16) runs overlapping tiles blended with
    cosine ramps over ``overlap`` voxels; ``max_memory_gb`` picks the largest tile whose pass fits
    (whole volume when it all fits). ``precision``: fp32 | channels_last | bf16 | fp16 (CUDA) | auto.
    """
    if ws.kind != "chisepnet-r2prime":
        raise InputError(f"predict_chisep needs chisepnet-r2prime weights, got {ws.kind}")
    vols = {"field": np.asarray(local_field_ppm, np.float32), "qsm": np.asarray(qsm_ppm, np.float32),
            "r2prime_over_dr": np.asarray(r2prime_hz, np.float32) / np.float32(ws.dr)}
    nv, tr = _geometry_in(vols, mask, affine, b0_dir)
    out = _net_pass(ws, nv, nv["mask"], device, precision, tile_size, overlap, progress, max_memory_gb)
    maps = {k: _clip_mask(out[k], nv["mask"]) for k in ("chi_para", "chi_dia")}
    maps = _geometry_out(maps, tr, mask)
    maps["chi_total"] = maps["chi_para"] - maps["chi_dia"]
    return maps


def predict_r2prime_from_r2star(ws: WeightSet, r2star_hz, mask, affine, b0_dir=None, device="auto",
                                precision="auto", tile_size=None, overlap: int = 16,
                                progress: ProgressFn = None, max_memory_gb: Optional[float] = None) -> np.ndarray:
    """chi-sepnet-R2*'s first net: R2* (Hz) -> predicted R2' (Hz, >= 0) on the input grid."""
    if ws.kind != "r2prime-from-r2star":
        raise InputError(f"predict_r2prime_from_r2star needs r2prime-from-r2star weights, got {ws.kind}")
    nv, tr = _geometry_in({"r2star_over_dr": np.asarray(r2star_hz, np.float32) / np.float32(ws.dr)},
                          mask, affine, b0_dir)
    out = _net_pass(ws, nv, nv["mask"], device, precision, tile_size, overlap, progress, max_memory_gb)
    r2p = _clip_mask(out["r2prime_over_dr"] * ws.dr, nv["mask"])
    return _geometry_out({"r2prime": r2p}, tr, mask)["r2prime"]


def predict_qsm(ws: WeightSet, local_field_ppm, mask, affine, b0_dir=None, device="auto", precision="auto",
                tile_size=None, overlap: int = 16, progress: ProgressFn = None,
                max_memory_gb: Optional[float] = None) -> np.ndarray:
    """A QSM net: local field (ppm) -> QSM (ppm) on the input grid."""
    if ws.kind != "qsm":
        raise InputError(f"predict_qsm needs qsm weights, got {ws.kind}")
    nv, tr = _geometry_in({"field": np.asarray(local_field_ppm, np.float32)}, mask, affine, b0_dir)
    out = _net_pass(ws, nv, nv["mask"], device, precision, tile_size, overlap, progress, max_memory_gb)
    return _geometry_out({"qsm": out["qsm"] * (nv["mask"] > 0)}, tr, mask)["qsm"]


def _as_weightset(w, kind: str) -> Optional[WeightSet]:
    if w is None:
        return None
    if isinstance(w, WeightSet):
        if w.kind != kind:
            raise InputError(f"{kind} weights needed, got a {w.kind} weight set")
        return w
    return load_weights(w, kind=kind)


def resolve_weights(method: str, weights=None) -> dict:
    """``weights``: None (built-in), a path / WeightSet (the chi-sepnet net) or a dict
    ``{"chisepnet": ..., "r2prime": ..., "qsm": ...}`` (None entries: built-in; qsm: none).

    The built-in chi-sepnet of ``chisepnet-r2star`` is
    :data:`~chisep.network.weights.BUILTIN_R2STAR_CHISEPNET` when installed (trained on predicted
    R2'), else the R2' pipeline's.
    """
    if isinstance(weights, dict):
        d = dict(weights)
        unknown = set(d) - {"chisepnet", "r2prime", "qsm"}
        if unknown:
            raise InputError(f"unknown weights entries {sorted(unknown)}; use chisepnet, r2prime, qsm")
    else:
        d = {"chisepnet": weights}
    res = {"chisepnet": _as_weightset(d.get("chisepnet"), "chisepnet-r2prime")}
    if res["chisepnet"] is None:
        variant = builtin_weights_dir() / BUILTIN_R2STAR_CHISEPNET
        if method == "chisepnet-r2star" and variant.is_file():
            res["chisepnet"] = load_weights(variant, kind="chisepnet-r2prime")
        else:
            res["chisepnet"] = load_builtin("chisepnet-r2prime")
    if method == "chisepnet-r2star":
        res["r2prime"] = _as_weightset(d.get("r2prime"), "r2prime-from-r2star") or load_builtin("r2prime-from-r2star")
    res["qsm"] = _as_weightset(d.get("qsm"), "qsm")
    return res


def run_chisepnet(method: str, local_field_ppm, mask, affine, r2prime_hz=None, r2star_hz=None, qsm_ppm=None,
                  weights=None, device="auto", precision="auto", tile_size=None, b0_dir=None,
                  progress: ProgressFn = None, overlap: int = 16, max_memory_gb: Optional[float] = None) -> dict:
    """chi-sepnet-R2' (``method="chisepnet-r2prime"``: needs R2') or chi-sepnet-R2*
    (``"chisepnet-r2star"``: R2* -> predicted R2' -> chi-sepnet).

    The QSM channel is ``qsm_ppm`` when given, else a QSM net (``weights["qsm"]``), else the
    closed-form QSM (:func:`chisep.qsm.qsm_closed_form`); giving both a map and a net is an
    InputError. ``weights_info`` names the source (``qsm_channel``: user, qsm-net or closed-form)
    and holds the QSM net's provenance only when the net ran. Geometry is done once for all passes.
    Returns chi_para, chi_dia, chi_total (ppm), r2prime (Hz; the predicted one for R2*), qsm (ppm,
    the channel used, on the input grid), weights_info, device, precision, timings_s.
    """
    t0 = time.perf_counter()
    if method not in NETWORK_METHODS:
        raise InputError(f"unknown network method {method!r}; use one of {', '.join(NETWORK_METHODS)}")
    if method == "chisepnet-r2prime" and r2prime_hz is None:
        raise InputError("chisepnet-r2prime needs an R2' map (Hz)")
    if method == "chisepnet-r2star" and r2star_hz is None:
        raise InputError("chisepnet-r2star needs an R2* map (Hz)")
    prog = progress or (lambda f, m: None)
    ws = resolve_weights(method, weights)
    mask = np.asarray(mask) > 0
    if b0_dir is None:
        b0_dir = b0_direction_from_affine(affine)
    timings = {}
    # The QSM channel is decided here and only here: the user's QSM map, else the QSM net, else
    # the closed-form QSM. A map and a net together would leave one of them unused, so that is an
    # error rather than a silent choice.
    if qsm_ppm is not None and ws["qsm"] is not None:
        raise InputError("both a QSM map (--qsm) and QSM-net weights (--qsm-weights) were given; the "
                         "QSM channel is one or the other: drop one of them")
    if qsm_ppm is not None:
        qsm_source = "user"
        qsm_ppm = np.asarray(qsm_ppm, np.float32)
    elif ws["qsm"] is not None:
        qsm_source = "qsm-net"
    else:
        from ..qsm import qsm_closed_form
        t = time.perf_counter()
        qsm_ppm = qsm_closed_form(np.asarray(local_field_ppm, np.float32), mask,
                                  voxel_size_from_affine(affine), b0_dir).astype(np.float32)
        timings["qsm_closed_form"] = time.perf_counter() - t
        qsm_source = "closed-form"
    prog(0.05, "resampling to the network grid")
    t = time.perf_counter()
    vols = {"field": np.asarray(local_field_ppm, np.float32)}
    if qsm_ppm is not None:
        vols["qsm"] = np.asarray(qsm_ppm, np.float32)
    if method == "chisepnet-r2prime":
        vols["r2prime"] = np.asarray(r2prime_hz, np.float32)
    else:
        vols["r2star"] = np.asarray(r2star_hz, np.float32)
    nv, tr = _geometry_in(vols, mask, affine, b0_dir)
    nm = nv["mask"]
    timings["geometry_in"] = time.perf_counter() - t
    cw = ws["chisepnet"]
    ch = {"field": nv["field"]}
    extra = {}

    def sub(a, b):
        return None if progress is None else (lambda f, m: progress(a + (b - a) * f, m))

    if qsm_source == "qsm-net":
        t = time.perf_counter()
        q = _net_pass(ws["qsm"], {"field": nv["field"]}, nm, device, precision, tile_size, overlap, sub(0.1, 0.35),
                      max_memory_gb)
        ch["qsm"] = q["qsm"] * (nm > 0)
        extra["qsm"] = ch["qsm"]
        timings["qsm_net"] = time.perf_counter() - t
    else:
        ch["qsm"] = nv["qsm"]
    if method == "chisepnet-r2prime":
        ch["r2prime_over_dr"] = nv["r2prime"] / np.float32(cw.dr)
    else:
        rw = ws["r2prime"]
        t = time.perf_counter()
        prog(0.35, "predicting R2' from R2*")
        r = _net_pass(rw, {"r2star_over_dr": nv["r2star"] / np.float32(rw.dr)}, nm, device, precision,
                      tile_size, overlap, sub(0.35, 0.6), max_memory_gb)
        r2p_hz = _clip_mask(r["r2prime_over_dr"] * rw.dr, nm)
        extra["r2prime"] = r2p_hz
        ch["r2prime_over_dr"] = r2p_hz / np.float32(cw.dr)
        timings["r2prime_net"] = time.perf_counter() - t
    prog(0.6, "chi-sepnet")
    t = time.perf_counter()
    out = _net_pass(cw, ch, nm, device, precision, tile_size, overlap, sub(0.6, 0.95), max_memory_gb)
    timings["chisepnet"] = time.perf_counter() - t
    maps = {k: _clip_mask(out[k], nm) for k in ("chi_para", "chi_dia")}
    maps.update(extra)
    t = time.perf_counter()
    back = _geometry_out(maps, tr, mask)
    timings["geometry_out"] = time.perf_counter() - t
    back["chi_total"] = back["chi_para"] - back["chi_dia"]
    run = _runner(cw, device, precision)
    info = {"chisepnet": cw.info(), "qsm_channel": qsm_source, "engine": run.info(),
            "network_grid": {"identity": tr.identity, "shape": list(tr.net_shape), "tilt_deg": tr.tilt_deg}}
    if ws.get("r2prime") is not None:
        info["r2prime"] = ws["r2prime"].info()
    if qsm_source == "qsm-net":
        info["qsm"] = ws["qsm"].info()
    prog(1.0, "chi-sepnet done")
    timings["total"] = time.perf_counter() - t0
    res = {"chi_para": back["chi_para"], "chi_dia": back["chi_dia"], "chi_total": back["chi_total"],
           "weights_info": info, "device": "onnxruntime-cpu" if run.onnx else str(run.dev),
           "precision": run.precision, "engine": run.info(), "timings_s": timings}
    if "r2prime" in back:
        res["r2prime"] = back["r2prime"]
    # the QSM channel on the input grid: the net's mapped back, else the map the network was fed
    res["qsm"] = back["qsm"] if qsm_source == "qsm-net" else qsm_ppm
    return res
