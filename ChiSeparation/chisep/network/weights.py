"""Weight files of the chi-sepnet networks: ours (safetensors + metadata), published (.pth) and ONNX.

A :class:`WeightSet` bundles a ready-to-run model with what inference needs to use it: its kind,
the per-channel z-score constants (``norm``: channel name -> (mean, std)), Dr and provenance.
Normalisation constants always travel with the weights; inference never hard-wires them.

Kinds and channels (names as in docs/DESIGN.md, "Network", and :mod:`chisep.training.data`):

======================  ===================================  ========================
kind                    inputs (in order)                     outputs
======================  ===================================  ========================
chisepnet-r2prime       qsm, field, r2prime_over_dr           chi_para, chi_dia
r2prime-from-r2star     r2star_over_dr                        r2prime_over_dr
qsm                     field                                 qsm
======================  ===================================  ========================

The built-in weights (our own, trained with ``chisep train``) are package data in ``chisep/weights``
(:func:`builtin_weights_dir`, overridden by ``$CHISEP_WEIGHTS_DIR``); when a file is missing
:func:`load_builtin` raises :class:`chisep.io.InputError` (never random weights).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..io import InputError, file_sha256
from ..physics import DR_CHISEPNET
from .unet import ChiSepUNet

#: kind -> (input channel names, output channel names)
KINDS = {
    "chisepnet-r2prime": (("qsm", "field", "r2prime_over_dr"), ("chi_para", "chi_dia")),
    "r2prime-from-r2star": (("r2star_over_dr",), ("r2prime_over_dr",)),
    "qsm": (("field",), ("qsm",)),
}

#: file name of each kind's built-in weights in :func:`builtin_weights_dir`
BUILTIN_FILES = {
    "chisepnet-r2prime": "chisepnet_r2prime.safetensors",
    "r2prime-from-r2star": "r2prime_from_r2star.safetensors",
    "qsm": "qsm.safetensors",
}

#: optional built-in chi-sepnet (kind chisepnet-r2prime) fine-tuned for the R2* pipeline: it saw the
#: R2' that the r2prime-from-r2star net predicts, not a measured one. Used by chisepnet-r2star when
#: present and no chi-sepnet weights are given; otherwise that pipeline uses the R2' net's weights.
BUILTIN_R2STAR_CHISEPNET = "chisepnet_r2star.safetensors"

#: z-score constants (mean, std) of the published chi-sepnet weights (docs/DESIGN.md, "Network")
PUBLISHED_NORMALISATION = {
    "field": (-0.0026046, 0.0108497),
    "qsm": (-0.0013402, 0.0315040),
    "r2prime_over_dr": (0.0514188, 0.0697753),
    "r2star_over_dr": (0.1586537, 0.0750198),
    "chi_para": (0.0259128, 0.0352642),
    "chi_dia": (0.0267007, 0.0279361),
}

FORMAT = "chisep-weights-1"


@dataclass
class WeightSet:
    """A ready-to-run network and how to feed it.

    model : torch module (eval mode, fp32, CPU) or :class:`OnnxNet`
    kind : one of :data:`KINDS`
    norm : channel name -> (mean, std) for every input and output channel
    dr : Dr (Hz/ppm) dividing R2'/R2* into the network's ppm-like channel
    """

    model: Any
    kind: str
    norm: dict
    dr: float = DR_CHISEPNET
    width: Optional[int] = None
    meta: dict = field(default_factory=dict)
    path: Optional[str] = None
    sha256: Optional[str] = None

    @property
    def inputs(self):
        return KINDS[self.kind][0]

    @property
    def outputs(self):
        return KINDS[self.kind][1]

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.model, OnnxNet)

    def info(self) -> dict:
        """Provenance for report.json (paths, sha256, kind, width, provenance, model card)."""
        d = {"path": self.path, "sha256": self.sha256, "kind": self.kind, "width": self.width,
             "format": self.meta.get("format"), "provenance": self.meta.get("provenance"),
             "norm": {k: [float(a) for a in v] for k, v in self.norm.items()}, "dr": float(self.dr)}
        card = self.meta.get("model_card")
        if card:
            d["model_card"] = card
        return d


def _check_kind(kind):
    if kind not in KINDS:
        raise InputError(f"unknown network kind {kind!r}; choose one of {', '.join(KINDS)}")


def _check_norm(kind, norm):
    need = set(KINDS[kind][0]) | set(KINDS[kind][1])
    miss = sorted(need - set(norm or {}))
    if miss:
        raise InputError(f"normalisation constants for {kind} lack {', '.join(miss)}")
    out = {}
    for k, v in norm.items():
        m, s = float(v[0]), float(v[1])
        if not np.isfinite(m) or not np.isfinite(s) or s <= 0:
            raise InputError(f"normalisation of {k!r} must be a finite (mean, std > 0), got {v!r}")
        out[k] = (m, s)
    return out



def _shape_of(state: dict):
    """(in_channels, out_channels, width) of a chi-sepnet state dict."""
    try:
        w1 = state["conv11.conv.weight"]
        wo = state["out.conv.weight"]
    except KeyError as e:
        raise InputError(f"not a chi-sepnet state dict: key {e.args[0]!r} missing "
                         f"(first keys: {', '.join(list(state)[:6])})") from None
    return int(w1.shape[1]), int(wo.shape[0]), int(w1.shape[0])


def _load_state_strict(model: torch.nn.Module, state: dict, source: str):
    """Load a state dict; on any mismatch raise InputError naming missing/unexpected keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def lst(xs, n=12):
            return ", ".join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {lst(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {lst(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {lst(shapes, 8)}")
        raise InputError(f"{source} does not match the chi-sepnet U-Net "
                         f"(in {model.in_channels}, out {model.out_channels}, width {model.width}): "
                         + "; ".join(parts))
    conv = {k: (v.to(own[k].dtype) if v.is_floating_point() else v.to(own[k].dtype)) for k, v in state.items()}
    model.load_state_dict(conv, strict=True)


def _model_from_state(state: dict, source: str) -> ChiSepUNet:
    cin, cout, width = _shape_of(state)
    model = ChiSepUNet(cin, cout, width)
    _load_state_strict(model, state, source)
    return model.float().eval()


# --------------------------------------------------------------------------- ours: safetensors
def save_weights(model, path, kind: str, norm: dict, meta: Optional[dict] = None,
                 dtype=torch.float16, dr: float = DR_CHISEPNET):
    """Write ``model`` (a :class:`ChiSepUNet`) as safetensors with the metadata inference needs.

    Floating tensors are stored as ``dtype`` (fp16 by default: half the size; the maps move by far
    less than 1 % NRMSE). The header metadata holds ``chisep`` (JSON: format, kind, width,
    in/out channels, norm, dr, provenance) plus every ``meta`` item as a string.
    """
    from safetensors.torch import save_file

    _check_kind(kind)
    norm = _check_norm(kind, norm)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    sd = model.state_dict()
    cin, cout, width = _shape_of(sd)
    ins, outs = KINDS[kind]
    if (cin, cout) != (len(ins), len(outs)):
        raise InputError(f"a {kind} network has {len(ins)} -> {len(outs)} channels, this one {cin} -> {cout}")
    tensors = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in sd.items()}
    meta = {str(k): str(v) for k, v in (meta or {}).items()}
    header = {"format": FORMAT, "kind": kind, "width": width, "in_channels": cin, "out_channels": cout,
              "inputs": list(ins), "outputs": list(outs),
              "norm": {k: [v[0], v[1]] for k, v in norm.items()},
              "dr": float(dr), "dtype": str(dtype).replace("torch.", ""),
              "provenance": meta.get("provenance") or meta.get("trained_by") or "unspecified"}
    md = dict(meta)
    md["chisep"] = json.dumps(header)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=md)
    os.replace(tmp, path)
    return path


def _load_safetensors(path: Path) -> WeightSet:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "chisep" not in md:
        raise InputError(f"{path}: safetensors file without chisep metadata (not written by "
                         "chisep.network.weights.save_weights); for published weights pass a .pth file")
    h = json.loads(md["chisep"])
    kind = h["kind"]
    _check_kind(kind)
    norm = _check_norm(kind, h["norm"])
    model = _model_from_state(state, str(path))
    meta = {k: v for k, v in md.items() if k != "chisep"}
    meta.update(format="safetensors", provenance=h.get("provenance"), stored_dtype=h.get("dtype"))
    card = _model_card_for(path)
    if card:
        meta["model_card"] = str(card)
    return WeightSet(model=model, kind=kind, norm=norm, dr=float(h.get("dr", DR_CHISEPNET)),
                     width=int(h["width"]), meta=meta, path=str(path), sha256=file_sha256(path))


def _model_card_for(path: Path):
    for c in (path.with_suffix(".md"), path.parent / (path.stem + "_MODEL_CARD.md"),
              path.parent / "MODEL_CARD.md"):
        if c.is_file():
            return c
    return None


# --------------------------------------------------------------------------- published: .pth
def _kind_from_channels(cin, cout, kind, source):
    if kind is not None:
        _check_kind(kind)
        ins, outs = KINDS[kind]
        if (cin, cout) != (len(ins), len(outs)):
            raise InputError(f"{source}: a {kind} network has {len(ins)} -> {len(outs)} channels, "
                             f"this file {cin} -> {cout}")
        return kind
    if (cin, cout) == (3, 2):
        return "chisepnet-r2prime"
    raise InputError(f"{source}: a {cin} -> {cout} channel network; say which it is "
                     f"(kind 'r2prime-from-r2star' or 'qsm', e.g. weights={{'r2prime': PATH}})")


def _read_published_state(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled modules, corrupt files
        raise InputError(f"{path}: cannot read as a PyTorch state dict with weights_only=True "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); only plain state dicts "
                         "or {'epoch', 'state_dict'} files are accepted") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise InputError(f"{path}: expected a state dict or {{'epoch', 'state_dict'}}, found "
                         f"{type(obj).__name__} with keys {list(obj)[:6] if isinstance(obj, dict) else '-'}")
    state = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_published(path, kind: Optional[str] = None, norm: Optional[dict] = None) -> WeightSet:
    """Load the authors' checkpoint (``{'epoch', 'state_dict'}`` or a bare state dict, optional
    ``module.`` prefix); width from ``conv11.conv.weight``; normalisation defaults to
    :data:`PUBLISHED_NORMALISATION`. A mismatching file raises InputError naming keys/shapes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    state = _read_published_state(path)
    cin, cout, width = _shape_of(state)
    kind = _kind_from_channels(cin, cout, kind, str(path))
    model = _model_from_state(state, str(path))
    norm = _check_norm(kind, norm or PUBLISHED_NORMALISATION)
    meta = {"format": "published-pth", "provenance": "user-supplied published chi-sepnet checkpoint "
            "(Kim et al., HBM 2025); normalisation: published constants"}
    return WeightSet(model=model, kind=kind, norm=norm, dr=DR_CHISEPNET, width=width, meta=meta,
                     path=str(path), sha256=file_sha256(path))


# --------------------------------------------------------------------------- ONNX
class OnnxNet:
    """An ONNX export of the U-Net run with onnxruntime (CPU provider by default).

    ``fixed_shape`` is the (X, Y, Z) a fixed-shape model accepts (None when dynamic); inference
    then tiles/pads to exactly that shape. Call with a numpy (N, C, X, Y, Z) float32 array.
    """

    def __init__(self, path, providers=None, threads: Optional[int] = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, sess_options=so,
                                            providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        shp = list(inp.shape)
        self.in_channels = shp[1] if isinstance(shp[1], int) else None
        oshp = list(out.shape)
        self.out_channels = oshp[1] if len(oshp) > 1 and isinstance(oshp[1], int) else None
        sp = shp[2:]
        self.fixed_shape = tuple(int(s) for s in sp) if all(isinstance(s, int) and s > 0 for s in sp) else None
        self.fixed_batch = shp[0] if isinstance(shp[0], int) else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map or {})

    def __call__(self, x):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if self.fixed_batch and x.shape[0] != self.fixed_batch:
            return np.concatenate([self(x[i:i + 1]) for i in range(x.shape[0])], 0)
        return self.session.run([self.output_name], {self.input_name: x})[0]


def export_onnx(model, path, dynamic: bool = True, shape=(32, 32, 32), kind: Optional[str] = None,
                norm: Optional[dict] = None, opset: int = 17):
    """Export a :class:`ChiSepUNet` to ONNX (classic TorchScript exporter). ``dynamic``: free batch and
    spatial axes; else fixed ``shape``. ``kind``/``norm`` are stored as model metadata when given."""
    import copy

    m = copy.deepcopy(model).float().cpu().eval()
    for blk in m.modules():  # export the plain graph, never the CPU-only fused op
        if hasattr(blk, "fused_relu"):
            blk.fused_relu = False
    cin = m.in_channels
    x = torch.zeros((1, cin) + tuple(int(s) for s in shape))
    axes = {"input": {0: "n", 2: "x", 3: "y", 4: "z"}, "output": {0: "n", 2: "x", 3: "y", 4: "z"}} if dynamic else None
    path = Path(path)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(m, (x,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    if kind or norm:
        import onnx

        mp = onnx.load(str(path))
        md = {"chisep_kind": kind or "", "chisep_norm": json.dumps({k: list(v) for k, v in (norm or {}).items()}),
              "chisep_width": str(m.width)}
        for k, v in md.items():
            e = mp.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(mp, str(path))
    return path


def load_onnx(path, kind: Optional[str] = None, norm: Optional[dict] = None) -> WeightSet:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        net = OnnxNet(path)
    except Exception as e:
        raise InputError(f"{path}: onnxruntime cannot open it ({type(e).__name__}: {str(e)[:200]})") from None
    md = net.metadata
    kind = kind or md.get("chisep_kind") or None
    if md.get("chisep_norm") and norm is None:
        n = json.loads(md["chisep_norm"])
        norm = n or None
    cin, cout = net.in_channels, net.out_channels
    if cin is None or cout is None:
        raise InputError(f"{path}: the ONNX model must declare its channel counts")
    kind = _kind_from_channels(cin, cout, kind, str(path))
    norm = _check_norm(kind, norm or PUBLISHED_NORMALISATION)
    width = int(md["chisep_width"]) if md.get("chisep_width") else None
    meta = {"format": "onnx", "fixed_shape": net.fixed_shape,
            "provenance": "ONNX export" + (" (chisep metadata)" if md.get("chisep_kind") else
                                           "; normalisation: published constants")}
    return WeightSet(model=net, kind=kind, norm=norm, dr=DR_CHISEPNET, width=width, meta=meta,
                     path=str(path), sha256=file_sha256(path))


# --------------------------------------------------------------------------- any file / built-in
def load_weights(path, kind: Optional[str] = None, norm: Optional[dict] = None) -> WeightSet:
    """Load any supported weight file: ``.safetensors`` (ours), ``.pth``/``.pth.tar``/``.pt``
    (published state dicts) or ``.onnx``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist; pass a .safetensors, .pth, .pth.tar or .onnx file")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        ws = _load_safetensors(path)
        if kind is not None and ws.kind != kind:
            raise InputError(f"{path} holds {ws.kind} weights, but {kind} weights are needed here")
        return ws
    if name.endswith(".onnx"):
        return load_onnx(path, kind, norm)
    if name.endswith((".pth", ".pth.tar", ".pt", ".tar", ".ckpt")):
        return load_published(path, kind, norm)
    # unknown extension: sniff
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK":
        return load_published(path, kind, norm)
    raise InputError(f"{path}: unknown weights format; use .safetensors, .pth, .pth.tar or .onnx")


#: environment variable naming a folder whose weight files replace the built-in ones (same file
#: names as :data:`BUILTIN_FILES`); used to evaluate candidate weights without installing them
WEIGHTS_DIR_ENV = "CHISEP_WEIGHTS_DIR"


def builtin_weights_dir() -> Path:
    """The folder of the built-in weights, the one place every caller asks.

    ``$CHISEP_WEIGHTS_DIR`` when set, else ``chisep/weights`` beside this package: the weights are
    package data, so a source tree, an editable or a regular ``pip install`` and the Slicer module
    (which copies ``chisep/`` whole) all find them at the same relative place.
    """
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "weights"


def builtin_path(kind: str) -> Path:
    _check_kind(kind)
    return builtin_weights_dir() / BUILTIN_FILES[kind]


def load_builtin(kind: str) -> WeightSet:
    """Our own trained weights of ``kind``; InputError when they are not installed."""
    p = builtin_path(kind)
    if not p.is_file():
        raise InputError(
            f"no trained weights installed for {kind}: {p} does not exist; run `chisep train` "
            f"(then `chisep train --out RUN --export {p}`) or pass --weights PATH (our .safetensors or the "
            "published .pth/.onnx files)")
    return load_weights(p, kind=kind)
