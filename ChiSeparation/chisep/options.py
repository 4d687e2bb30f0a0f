"""The options contract: every user option of ``chisep run`` / ``chisep preprocess`` declared once.

Each option is a dataclass field whose metadata holds its choices, unit, command-line flag and help
text. Everything else is built from here, so that a choice or a default is written in one place:

- the command-line parsers (:func:`add_arguments`, :func:`from_args`) of ``chisep run``,
  ``chisep preprocess`` and the shared options of ``chisep bids`` / ``chisep qsmci``;
- the argument list the Slicer module's background process runs (:func:`to_argv`);
- the Slicer panel's combo boxes (the parameter node's ``Choice`` annotations read :data:`METHODS`,
  :data:`BG_METHODS`, ... and the labels of :func:`labels`);
- the validation of the core functions (``pipeline.separate``, ``preprocess_gre``, network
  inference), which check against the same tuples.

Standard library only (the Slicer module imports it before torch or numpy are installed).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Optional

#: chi-separation methods (``pipeline.separate``)
METHODS = ("chisepnet-r2prime", "chisepnet-r2star", "regularized")
#: the methods that run chi-sepnet (``network.inference.run_chisepnet``)
NETWORK_METHODS = ("chisepnet-r2prime", "chisepnet-r2star")
#: compute devices (``network.inference.resolve_device``); ``auto``: cuda > mps > cpu
DEVICES = ("auto", "cpu", "cuda", "mps")
#: network precisions (``network.inference.resolve_precision``)
PRECISIONS = ("auto", "fp32", "channels_last", "bf16", "fp16")
#: background field removal methods (``preprocess.preprocess_gre``)
BG_METHODS = ("vsharp", "lbv", "lbv-qsm", "pdf")
#: spatial unwrapping methods (``preprocess.unwrap.unwrap_echoes``)
UNWRAP_METHODS = ("laplacian", "region-growing")
#: units of a processed local field (``acquisition.load_processed_maps``)
FIELD_UNITS = ("hz", "ppm", "rad")
#: phase sign conventions: +1 phase grows with frequency, -1 the other vendor sense
PHASE_SIGNS = (1, -1)
#: progress reporting of the commands (``progress.make_progress``)
PROGRESS_MODES = ("text", "json", "none")


def option(default, help: str, *, choices=None, unit: Optional[str] = None, flag: Optional[str] = None,
           type=None, metavar: Optional[str] = None, labels: Optional[dict] = None, group: Optional[str] = None):
    """A dataclass field carrying one option's declaration (choices, unit, flag, help, display labels)."""
    return field(default=default, metadata={
        "help": help, "choices": tuple(choices) if choices is not None else None, "unit": unit,
        "flag": flag, "type": type, "metavar": metavar, "labels": dict(labels or {}), "group": group})


@dataclass(frozen=True)
class AcquisitionOptions:
    """How the inputs are read: phase unit and sign of raw scans, field unit of a processed field,
    field strength (read by :mod:`chisep.acquisition`)."""
    phase_unit: str = option(
        "auto", type=str.lower, metavar="U", group="raw",
        help="unit of --gre-phase: auto (default: from the values and the sidecar; ambiguous values are "
             "refused), rad, deg, mrad, int (scanner integers, bit depth from the values) or int<N> (e.g. int12)")
    phase_sign: Optional[int] = option(
        None, choices=PHASE_SIGNS, type=int, group="raw", labels={None: "From the data", 1: "+1", -1: "-1"},
        help="+1 if phase increases with frequency (default, or the sidecar's PhaseSign), -1 for the other "
             "vendor sense")
    field_unit: Optional[str] = option(None, choices=FIELD_UNITS, group="processed",
                                       labels={"hz": "Hz", "ppm": "ppm", "rad": "rad"},
                                       help="unit of --local-field: hz, ppm or rad (rad needs --field-te)")
    b0_t: Optional[float] = option(None, type=float, unit="T", flag="--b0", metavar="T", group="either",
                                   help="field strength in tesla (default: sidecar, else 3)")

    def __post_init__(self):
        validate(self)

    def used(self, raw: bool) -> dict:
        """The options that apply to raw scans (``raw``) or to processed maps."""
        keep = ("phase_unit", "phase_sign", "b0_t") if raw else ("field_unit", "b0_t")
        return {k: getattr(self, k) for k in keep}


@dataclass(frozen=True)
class PreprocessOptions:
    """How raw multi-echo GRE (+ SE) is turned into the local field and relaxation maps
    (:func:`chisep.preprocess.preprocess_gre`)."""
    unwrap: str = option(
        "region-growing", choices=UNWRAP_METHODS, group="raw",
        labels={"region-growing": "Region growing", "laplacian": "Laplacian"},
        help="spatial unwrapping of the first echo difference (default region-growing)")
    bg_method: str = option(
        "vsharp", choices=BG_METHODS, group="raw",
        labels={"vsharp": "V-SHARP", "lbv": "LBV", "lbv-qsm": "LBV-QSM", "pdf": "PDF"},
        help="background field removal: vsharp (default; what the shipped weights were trained on), lbv, "
             "lbv-qsm (LBV plus the local field's boundary values from a first QSM) or pdf")
    vsharp_radius_mm: float = option(12.0, unit="mm", flag="--vsharp-radius", metavar="MM", group="raw",
                                     help="largest V-SHARP radius (mm, default 12)")
    bipolar: bool = option(False, group="raw", help="remove odd/even echo phase offsets (bipolar readout)")

    def __post_init__(self):
        validate(self)

    def preprocess_kwargs(self) -> dict:
        """The keyword arguments of :func:`chisep.preprocess.preprocess_gre` these options set."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """How processed maps are separated (method, network, compute)."""
    method: str = option(
        "chisepnet-r2prime", choices=METHODS,
        labels={"chisepnet-r2prime": "χ-sepnet-R2′ (GRE + SE or R2)",
                "chisepnet-r2star": "χ-sepnet-R2* (GRE only)", "regularized": "Regularized (conventional)"},
        help="chisepnet-r2prime (needs R2: --se-mag, --r2 or --r2prime), chisepnet-r2star (GRE only) or "
             "regularized (the conventional regularized chi-separation)")
    weights: Optional[str] = option(
        None, metavar="PATH",
        help="chi-sepnet weights: ours (.safetensors) or a published checkpoint (.pth/.pth.tar/.onnx); "
             "default built-in")
    r2prime_weights: Optional[str] = option(
        None, metavar="PATH", help="R2'-prediction net for chisepnet-r2star (default built-in)")
    qsm_weights: Optional[str] = option(
        None, metavar="PATH", help="a QSM net for the QSM channel (default: closed-form QSM)")
    device: str = option("auto", choices=DEVICES,
                         labels={"auto": "Auto", "cpu": "CPU", "cuda": "GPU (CUDA)", "mps": "GPU (Apple MPS)"},
                         help="compute device of the network (auto: cuda, else mps, else cpu)")
    precision: str = option(
        "auto", choices=PRECISIONS,
        labels={"auto": "Auto", "fp32": "fp32", "channels_last": "fp32 (channels last)", "bf16": "bf16",
                "fp16": "fp16 (CUDA)"},
        help="network precision: auto (bf16 where the device runs it natively, else fp32), fp32, "
             "channels_last, bf16 or fp16 (CUDA only)")
    tile_size: Optional[int] = option(None, type=int, unit="voxels", metavar="N",
                                      help="run the network on overlapping N^3 tiles (less memory)")
    max_memory_gb: Optional[float] = option(
        None, type=float, unit="GiB", flag="--max-memory", metavar="GIB",
        help="memory (GiB) one network pass may use: the network runs on tiles sized to fit (--tile-size "
             "takes precedence); default: the whole volume at once")
    dr: Optional[float] = option(None, type=float, unit="Hz/ppm", metavar="HZ_PER_PPM",
                                 help="relaxometric constant for --method regularized (default 114)")

    def __post_init__(self):
        validate(self)

    @property
    def uses_network(self) -> bool:
        return self.method in NETWORK_METHODS

    def weights_arg(self):
        """The ``weights`` argument of :func:`chisep.pipeline.separate` (None: all built-in)."""
        given = {"chisepnet": self.weights, "r2prime": self.r2prime_weights, "qsm": self.qsm_weights}
        return given if any(given.values()) else None

    def used(self) -> dict:
        """The options the method uses (what report.json records): no network options for the
        regularized method, no ``dr`` for chi-sepnet, no R2' net for chisepnet-r2prime."""
        d = dataclasses.asdict(self)
        if not self.uses_network:
            for k in ("weights", "r2prime_weights", "qsm_weights", "device", "precision", "tile_size",
                      "max_memory_gb"):
                d.pop(k)
        else:
            d.pop("dr")
            if self.method != "chisepnet-r2star":
                d.pop("r2prime_weights")
        return d


@dataclass(frozen=True)
class OutputOptions:
    """Where and how a command writes."""
    progress: str = option("text", choices=PROGRESS_MODES,
                           help="progress reports: text (stderr), json (one line per report on stdout) or none")
    overwrite: bool = option(False, help="replace the files of an earlier chisep run in --out (only when "
                                         "this run succeeds; other files are never removed)")

    def __post_init__(self):
        validate(self)


class OptionError(ValueError):
    """An option value outside its declared choices."""


def flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def get_field(cls, name: str) -> dataclasses.Field:
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def choices(cls, name: str) -> tuple:
    """The declared choices of option ``name`` of ``cls``."""
    return get_field(cls, name).metadata["choices"]


def labels(cls, name: str) -> list:
    """``[(label, value), ...]`` for a combo box, in the declared order of the choices."""
    f = get_field(cls, name)
    lab = f.metadata["labels"]
    values = ([None] if None in lab else []) + list(f.metadata["choices"])
    return [(lab.get(v, str(v)), v) for v in values]


def validate(obj) -> None:
    """Raise :class:`OptionError` (naming the option's flag and the choices) for a value outside the
    declared choices. ``chisep.io.InputError`` subclasses are raised by callers that need them."""
    for f in fields(obj):
        ch = f.metadata.get("choices")
        v = getattr(obj, f.name)
        if ch is not None and v is not None and v not in ch:
            raise OptionError(f"{flag(f)} {v!r}: choose one of {', '.join(str(c) for c in ch)}")


def add_arguments(parser, cls, groups: Optional[dict] = None, only=None, exclude=(), overrides=None) -> None:
    """Add ``cls``'s options to an argparse parser (``dest`` = field name).

    ``groups``: ``{"raw": argument_group, ...}`` places fields with that ``group`` metadata;
    ``only``/``exclude``: field names; ``overrides``: ``{name: {"default": ..., "help": ...}}`` for a
    command whose default differs (e.g. ``chisep bids`` picks the method per subject)."""
    groups = groups or {}
    overrides = overrides or {}
    for f in fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        m = f.metadata
        target = groups.get(m.get("group"), parser)
        kw = {"dest": f.name, "default": f.default, "help": m["help"]}
        if f.type in ("bool", bool):
            # a flag sets the opposite of the default (``--no-flips`` for a field that defaults to True)
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            if m.get("type") is not None:
                kw["type"] = m["type"]
            elif f.type in ("float", "Optional[float]"):
                kw["type"] = float
            if m.get("choices") is not None:
                kw["choices"] = m["choices"]
            if m.get("metavar"):
                kw["metavar"] = m["metavar"]
        kw.update(overrides.get(f.name, {}))
        target.add_argument(flag(f), **kw)


def from_args(cls, args):
    """An options object from an argparse namespace (fields the parser did not define keep their
    defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def to_argv(obj, always=()) -> list:
    """The command-line arguments that reproduce ``obj``: every option that differs from its default,
    plus the fields named in ``always``. The inverse of :func:`from_args` over :func:`add_arguments`."""
    out = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None or (v == f.default and f.name not in always):
            continue
        if isinstance(v, bool):
            if v != f.default:
                out.append(flag(f))
            continue
        out += [flag(f), repr(v) if isinstance(v, float) else str(v)]
    return out


__all__ = ["METHODS", "NETWORK_METHODS", "DEVICES", "PRECISIONS", "BG_METHODS", "UNWRAP_METHODS",
           "FIELD_UNITS", "PHASE_SIGNS", "PROGRESS_MODES", "AcquisitionOptions", "PreprocessOptions", "RunOptions",
           "OutputOptions", "OptionError", "option", "choices", "labels", "validate", "add_arguments",
           "from_args", "to_argv", "flag", "get_field", "fields"]
