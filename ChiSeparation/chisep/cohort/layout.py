"""BIDS inputs and derivative names for ``chisep bids``.

Inputs (raw dataset, found with pybids)
    multi-echo GRE ``sub-<s>[_ses-<t>][_acq-<a>][_run-<r>]_echo-<n>_part-mag|phase_MEGRE.nii[.gz]``
    with JSON sidecars (``EchoTime`` in s, ``MagneticFieldStrength`` in T); optionally a multi-echo
    spin echo ``..._echo-<n>_MESE.nii[.gz]`` (R2). One (subject, session, acq, run) = one job.
Derivatives read (any ``BIDS_DIR/derivatives/<pipeline>`` with a dataset_description.json, or
``--derivatives DIR``)
    a lesion mask ``..._label-lesion_mask`` or ``..._desc-lesion[s]_mask`` (binary or labelled, on
    any grid, e.g. the FLAIR's: resampled nearest-neighbour onto the GRE grid), and a segmentation
    ``..._dseg.nii[.gz]`` with its label table ``..._dseg.tsv`` (columns ``index``, ``name``).
Outputs (derivatives, :func:`derivative_name`)
    ``sub-<s>[_ses-<t>][_acq-<a>][_run-<r>]_desc-paramagnetic_Chimap.nii.gz`` etc., entities in the
    order of the BIDS specification (:data:`ENTITY_ORDER`).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..io import InputError, file_sha256

#: BIDS entity keys in the specification's order (the subset a file name of ours can carry)
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part", "space",
                "label", "desc")

#: derivative outputs: key -> (entities added, suffix, extension, units, description)
OUTPUTS = {
    "chi_para": ({"desc": "paramagnetic"}, "Chimap", ".nii.gz", "ppm",
                 "paramagnetic susceptibility chi_para (positive)"),
    "chi_dia": ({"desc": "diamagnetic"}, "Chimap", ".nii.gz", "ppm",
                "diamagnetic susceptibility stored as its positive magnitude |chi_dia|"),
    "chi_total": ({}, "Chimap", ".nii.gz", "ppm", "total susceptibility chi_para - |chi_dia|"),
    "r2star": ({}, "R2starmap", ".nii.gz", "Hz", "R2* from the multi-echo GRE magnitude"),
    "r2prime": ({}, "R2primemap", ".nii.gz", "Hz", "R2' = R2* - R2 (measured or predicted)"),
    "r2": ({}, "R2map", ".nii.gz", "Hz", "R2 from the multi-echo spin echo"),
    "mask": ({"desc": "brain"}, "mask", ".nii.gz", "", "brain mask the maps were computed in"),
    "lesions": ({"desc": "lesions"}, "dseg", ".nii.gz", "",
                "lesion labels resampled (nearest neighbour) onto the GRE grid"),
    "lesion_table": ({"desc": "lesions"}, "stats", ".tsv", "",
                     "per-lesion statistics and classification (chisep.lesions)"),
}
#: outputs every completed job has (the others depend on the inputs)
REQUIRED_OUTPUTS = ("chi_para", "chi_dia", "chi_total", "r2prime", "mask")
#: suffixes outside the BIDS schema that we write (listed in the derivatives' .bidsignore)
NONSTANDARD_PATTERNS = ("*_R2primemap.*", "*_desc-lesions_stats.*", "logs/", "group/")


@dataclass
class Job:
    """One subject/session/acquisition: the unit of work (one Dask task). Paths are strings."""
    subject: str
    session: Optional[str]
    entities: dict                      # sub, ses, acq, run (what output names carry)
    gre_mag: list                       # per echo, in echo order
    gre_phase: list
    se_mag: list = field(default_factory=list)
    lesion_mask: Optional[str] = None
    dseg: Optional[str] = None
    dseg_labels: dict = field(default_factory=dict)   # index -> name
    root: str = ""                      # the raw BIDS dataset (for BIDS URIs in sidecars)

    def bids_uri(self, path) -> str:
        """``bids:raw:<path relative to the raw dataset>`` (the key of DatasetLinks), or the path
        itself when it lies outside the dataset."""
        try:
            return "bids:raw:" + Path(path).resolve().relative_to(Path(self.root).resolve()).as_posix()
        except ValueError:
            return str(path)

    @property
    def name(self) -> str:
        """``sub-01_ses-2`` style identifier (used in messages and Dask keys)."""
        return "_".join(f"{k}-{self.entities[k]}" for k in ENTITY_ORDER if self.entities.get(k))

    def inputs(self) -> list:
        """Every input file whose content enters the run hash (images and their sidecars)."""
        files = list(self.gre_mag) + list(self.gre_phase) + list(self.se_mag)
        files += [f for f in (self.lesion_mask, self.dseg) if f]
        out = []
        for f in files:
            out.append(f)
            sc = sidecar_of(f)
            if sc.exists():
                out.append(str(sc))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def sidecar_of(path) -> Path:
    p = str(path)
    for ext in (".nii.gz", ".nii", ".tsv"):
        if p.endswith(ext):
            return Path(p[: -len(ext)] + ".json")
    return Path(p + ".json")


# --------------------------------------------------------------------------- names
def derivative_name(entities: dict, suffix: str, extension: str = ".nii.gz") -> str:
    """A BIDS file name: ``key-value`` pairs in :data:`ENTITY_ORDER`, then ``_suffix`` + extension.

    Raises :class:`InputError` for an unknown entity key or a value that is not alphanumeric.
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise InputError(f"unknown BIDS entities {sorted(unknown)}")
    parts = []
    for k in ENTITY_ORDER:
        v = entities.get(k)
        if v in (None, ""):
            continue
        if not re.fullmatch(r"[A-Za-z0-9]+", str(v)):
            raise InputError(f"BIDS label {k}-{v} must be alphanumeric")
        parts.append(f"{k}-{v}")
    return "_".join(parts) + f"_{suffix}{extension}"


def output_dir_of(out_root, entities: dict) -> Path:
    """``OUT/sub-<s>[/ses-<t>]/anat``."""
    d = Path(out_root) / f"sub-{entities['sub']}"
    if entities.get("ses"):
        d = d / f"ses-{entities['ses']}"
    return d / "anat"


def output_paths(out_root, entities: dict) -> dict:
    """key of :data:`OUTPUTS` -> path of that derivative for this job."""
    d = output_dir_of(out_root, entities)
    base = {k: entities[k] for k in ("sub", "ses", "acq", "run") if entities.get(k)}
    return {key: d / derivative_name({**base, **extra}, suffix, ext)
            for key, (extra, suffix, ext, _u, _d) in OUTPUTS.items()}


def dataset_description(bids_dir, version: str, options: Optional[dict] = None) -> dict:
    """The derivatives' dataset_description.json (DatasetType derivative, GeneratedBy, SourceDatasets)."""
    return {
        "Name": "chisep: chi-separation maps (paramagnetic / diamagnetic susceptibility)",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "chisep",
            "Version": version,
            "Description": "chi-separation of multi-echo GRE (+ multi-echo SE) into chi_para and "
                           "|chi_dia| (ppm) with chi-sepnet or a regularized method",
            "CodeURL": "https://github.com/chiseparation/ChiSeparation",
        }],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        "ChisepOptions": options or {},
    }


# --------------------------------------------------------------------------- hashing
def run_hash(job: Job, options: dict, weights_sha256: dict, version: str) -> str:
    """SHA-256 over the job's input files (names and contents), the options, the weights' SHA-256
    and the chisep version: the outputs of a job are reused only when this is unchanged."""
    h = hashlib.sha256()
    for f in sorted(job.inputs(), key=lambda p: Path(p).name):
        h.update(Path(f).name.encode())
        h.update(file_sha256(f).encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    h.update(json.dumps(weights_sha256, sort_keys=True).encode())
    h.update(version.encode())
    return h.hexdigest()


def is_complete(out_root, job: Job, expected_hash: str) -> bool:
    """True when every required output of ``job`` and its sidecar exist and every sidecar records
    ``expected_hash`` (``ChisepRunHash``): then a rerun may skip the job."""
    paths = output_paths(out_root, job.entities)
    keys = list(REQUIRED_OUTPUTS)
    if job.lesion_mask:
        keys += ["lesions", "lesion_table"]
    for key in keys:
        p = paths[key]
        sc = sidecar_of(p)
        if not p.exists() or not sc.exists():
            return False
        try:
            if json.loads(sc.read_text()).get("ChisepRunHash") != expected_hash:
                return False
        except (OSError, ValueError):
            return False
    return True


# --------------------------------------------------------------------------- resampling
def resample_nearest(data, affine_src, shape_dst, affine_dst) -> np.ndarray:
    """Resample a label map onto another grid with nearest-neighbour interpolation.

    Each target voxel centre (``affine_dst``, voxel -> RAS mm) is mapped into the source voxel
    grid (``affine_src``) and takes the label of the nearest source voxel; outside the source
    volume the label is 0. Labels are preserved exactly (no new values).
    """
    from scipy import ndimage as ndi

    m = np.linalg.inv(np.asarray(affine_src, float)) @ np.asarray(affine_dst, float)
    arr = np.asarray(data)
    out = ndi.affine_transform(arr.astype(np.float32), m[:3, :3], offset=m[:3, 3],
                               output_shape=tuple(int(s) for s in shape_dst), order=0,
                               mode="constant", cval=0.0)
    return np.rint(out).astype(np.int32)


# --------------------------------------------------------------------------- discovery
def _echo_sorted(files):
    def key(f):
        return int(f.entities.get("echo", 0) or 0)
    return sorted(files, key=key)


def _indexer():
    from bids import BIDSLayoutIndexer

    # sidecars are read by the loaders; pybids only has to find the files
    return BIDSLayoutIndexer(validate=False, index_metadata=False)


def _derivative_layouts(bids_dir: Path, extra_dirs, exclude: Optional[Path]):
    from bids import BIDSLayout

    dirs = []
    droot = bids_dir / "derivatives"
    if droot.is_dir():
        dirs += sorted(p for p in droot.iterdir() if p.is_dir())
    dirs += [Path(d) for d in (extra_dirs or [])]
    layouts = []
    for d in dirs:
        if exclude is not None and d.resolve() == exclude.resolve():
            continue
        if not (d / "dataset_description.json").exists():
            continue
        try:
            layouts.append(BIDSLayout(str(d), validate=False, is_derivative=True, indexer=_indexer()))
        except Exception:  # pybids rejects some non-BIDS folders; they hold nothing for us
            continue
    return layouts


def _pick_one(files, what, job_name, entities):
    """The one derivative file that matches a job: same acq/run if given, else the only one."""
    if not files:
        return None
    for k in ("acquisition", "run"):
        v = entities.get(k)
        if v is not None and len(files) > 1:
            same = [f for f in files if f.entities.get(k) == v]
            files = same or files
    if len(files) > 1:
        names = ", ".join(Path(f.path).name for f in files[:4])
        raise InputError(f"{job_name}: {len(files)} {what} files match ({names}); keep one per "
                         f"subject/session or give --derivatives a folder with one")
    return files[0].path


def read_dseg_labels(dseg_path) -> dict:
    """index -> name from the segmentation's label table: ``<dseg base>.tsv`` beside it, else a
    ``dseg.tsv`` / ``desc-*_dseg.tsv`` at the derivative dataset's top. Empty if none."""
    import csv

    p = Path(dseg_path)
    cands = [sidecar_of(p).with_suffix(".tsv")]
    for parent in list(p.parents)[:5]:
        cands += sorted(parent.glob("*dseg.tsv"))
    for c in cands:
        if c.is_file():
            with open(c, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            if rows and "index" in rows[0] and "name" in rows[0]:
                return {int(r["index"]): r["name"] for r in rows}
    return {}


def find_jobs(bids_dir, participant_label=None, session_label=None, derivatives=None,
              exclude_dir=None) -> list:
    """Every job (subject/session/acq/run with a multi-echo GRE) of a BIDS dataset.

    Parameters
    ----------
    bids_dir : the raw BIDS dataset (must contain dataset_description.json).
    participant_label, session_label : lists of labels (with or without ``sub-``/``ses-``) to keep.
    derivatives : extra derivative folders to search for lesion masks / segmentations.
    exclude_dir : our own output folder when it lies under ``bids_dir/derivatives`` (not an input).

    Returns
    -------
    list of :class:`Job` in subject, session order. Raises :class:`InputError` when the folder is
    not a BIDS dataset, a requested label does not exist, or a GRE lacks its phase/magnitude partner.
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json); give the "
                         f"folder that holds sub-*/ and dataset_description.json")
    layout = BIDSLayout(str(bids_dir), validate=False, indexer=_indexer())
    subs = layout.get_subjects()
    if participant_label:
        want = [str(s).removeprefix("sub-") for s in participant_label]
        missing = sorted(set(want) - set(subs))
        if missing:
            raise InputError(f"--participant-label {' '.join(missing)}: no such subject in {bids_dir} "
                             f"(subjects: {' '.join(subs) or 'none'})")
        subs = [s for s in subs if s in want]
    sess_want = [str(s).removeprefix("ses-") for s in session_label] if session_label else None
    dlayouts = _derivative_layouts(bids_dir, derivatives, Path(exclude_dir) if exclude_dir else None)
    jobs = []
    ext = [".nii.gz", ".nii"]
    for sub in sorted(subs):
        mags = layout.get(subject=sub, suffix="MEGRE", part="mag", extension=ext)
        groups = {}
        for f in mags:
            e = f.entities
            key = (e.get("session"), e.get("acquisition"), e.get("run"))
            groups.setdefault(key, []).append(f)
        for (ses, acq, run), mfiles in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            if sess_want is not None and (ses is None or ses not in sess_want):
                continue
            q = {"subject": sub, "extension": ext}
            q["session"] = ses if ses is not None else None
            if acq is not None:
                q["acquisition"] = acq
            if run is not None:
                q["run"] = run
            phases = _echo_sorted(layout.get(suffix="MEGRE", part="phase", **q))
            mfiles = _echo_sorted(mfiles)
            ents = {"sub": sub, "ses": ses, "acq": acq, "run": None if run is None else str(run)}
            name = "_".join(f"{k}-{v}" for k, v in ents.items() if v)
            if len(phases) != len(mfiles):
                raise InputError(f"{name}: {len(mfiles)} GRE magnitude echoes but {len(phases)} phase "
                                 f"echoes (*_part-phase_MEGRE); every echo needs both parts")
            se = _echo_sorted(layout.get(suffix="MESE", **{k: v for k, v in q.items() if k != "acquisition"}))
            se = [f for f in se if f.entities.get("part") in (None, "mag")]
            job = Job(subject=sub, session=ses, entities={k: v for k, v in ents.items() if v},
                      gre_mag=[f.path for f in mfiles], gre_phase=[f.path for f in phases],
                      se_mag=[f.path for f in se], root=str(bids_dir))
            _attach_derivatives(job, dlayouts, sub, ses, {"acquisition": acq, "run": run})
            jobs.append(job)
    if sess_want is not None:
        found = {j.session for j in jobs}
        missing = sorted(set(sess_want) - found)
        if missing:
            raise InputError(f"--session-label {' '.join(missing)}: no multi-echo GRE for that session")
    return jobs


def _attach_derivatives(job: Job, dlayouts, sub, ses, acqrun):
    les, seg = [], []
    for lay in dlayouts:
        q = {"subject": sub, "extension": [".nii.gz", ".nii"]}
        for f in lay.get(suffix="mask", **q):
            e = f.entities
            if e.get("session") not in (None, ses):
                continue
            if e.get("label") == "lesion" or str(e.get("desc", "")).lower() in ("lesion", "lesions"):
                les.append(f)
        for f in lay.get(suffix="dseg", **q):
            e = f.entities
            if e.get("session") not in (None, ses):
                continue
            if str(e.get("desc", "")).lower() in ("lesion", "lesions"):
                continue
            seg.append(f)
    # a session-specific file wins over a session-less one
    for lst in (les, seg):
        if any(f.entities.get("session") == ses for f in lst) and ses is not None:
            lst[:] = [f for f in lst if f.entities.get("session") == ses]
    job.lesion_mask = _pick_one(les, "lesion mask", job.name, acqrun)
    job.dseg = _pick_one(seg, "segmentation (dseg)", job.name, acqrun)
    if job.dseg:
        job.dseg_labels = read_dseg_labels(job.dseg)


# --------------------------------------------------------------------------- derivative rules
def _split_name(name: str):
    for ext in (".nii.gz", ".nii", ".json", ".tsv", ".png"):
        if name.endswith(ext):
            stem, e = name[: -len(ext)], ext
            break
    else:
        stem, e = name.rsplit(".", 1)[0], "." + name.rsplit(".", 1)[-1]
    toks = stem.split("_")
    pairs = []
    for t in toks[:-1]:
        if "-" not in t:
            return None, None, None
        k, v = t.split("-", 1)
        pairs.append((k, v))
    return pairs, toks[-1], e


def derivative_problems(out_root) -> list:
    """Check a derivatives folder against the BIDS schema shipped with ``bidsschematools``.

    Rules checked: ``dataset_description.json`` has every field the schema requires for a
    derivative dataset (``Name``, ``BIDSVersion``; ``GeneratedBy`` when ``DatasetType`` is
    ``derivative``) and a ``GeneratedBy[].Name``; every file under ``sub-*/`` (except those matched
    by ``.bidsignore``) sits in ``sub-<s>[/ses-<t>]/<datatype>/`` with matching ``sub``/``ses``
    entities, uses known entity keys in the schema's order, and matches a derivative file rule
    (datatype, suffix, extension, allowed entities). Returns a list of problems (empty = passes).
    """
    import fnmatch

    from bidsschematools import schema as bst

    s = bst.load_schema()
    out_root = Path(out_root)
    probs = []
    key_of = {n: s.objects.entities[n]["name"] for n in s.rules.entities}
    order = [key_of[n] for n in s.rules.entities]
    dd_path = out_root / "dataset_description.json"
    if not dd_path.is_file():
        return [f"{dd_path}: missing"]
    dd = json.loads(dd_path.read_text())
    for rule_name, rule in s.rules.json.dataset.items():
        sel = " ".join(rule.get("selectors", []))
        if "derivative" in sel and dd.get("DatasetType") != "derivative":
            continue
        for fld, lvl in rule["fields"].items():
            level = lvl if isinstance(lvl, str) else lvl.get("level")
            if level == "required" and fld not in dd:
                probs.append(f"dataset_description.json: required field {fld} missing ({rule_name})")
    gb = dd.get("GeneratedBy")
    if dd.get("DatasetType") == "derivative" and not (isinstance(gb, list) and gb and all("Name" in g for g in gb)):
        probs.append("dataset_description.json: GeneratedBy must be a list of objects with Name")
    ign = []
    if (out_root / ".bidsignore").is_file():
        ign = [line.strip() for line in (out_root / ".bidsignore").read_text().splitlines() if line.strip()]
    rules = []
    for group in s.rules.files.deriv.values():
        for r in group.values():
            rules.append(r)
    for f in sorted(out_root.rglob("*")):
        if f.is_dir() or f.name.startswith("."):
            continue
        rel = f.relative_to(out_root).as_posix()
        if any(fnmatch.fnmatch(f.name, p) or rel.startswith(p.rstrip("/") + "/") for p in ign):
            continue
        if "/" not in rel:
            if rel not in ("dataset_description.json", "README", "README.md", "CHANGES", "LICENSE"):
                probs.append(f"{rel}: unexpected top-level file")
            continue
        parts = rel.split("/")
        pairs, suffix, ext = _split_name(f.name)
        if pairs is None:
            probs.append(f"{rel}: not an entity-value file name")
            continue
        ents = dict(pairs)
        keys = [k for k, _ in pairs]
        if any(k not in order for k in keys):
            probs.append(f"{rel}: unknown entities {[k for k in keys if k not in order]}")
            continue
        if [order.index(k) for k in keys] != sorted(order.index(k) for k in keys):
            probs.append(f"{rel}: entities out of the BIDS order ({keys})")
        if parts[0] != f"sub-{ents.get('sub')}":
            probs.append(f"{rel}: folder {parts[0]} does not match sub-{ents.get('sub')}")
        expect_len = 4 if "ses" in ents else 3
        if len(parts) != expect_len or ("ses" in ents and parts[1] != f"ses-{ents['ses']}"):
            probs.append(f"{rel}: expected sub-<s>/[ses-<t>/]<datatype>/<file>")
            continue
        datatype = parts[-2]
        names = {n for n, k in key_of.items() if k in ents}
        ok = False
        for r in rules:
            if datatype not in r.get("datatypes", []) or suffix not in r.get("suffixes", []):
                continue
            if ext not in r.get("extensions", []):
                continue
            allowed = set(r["entities"])
            required = {n for n, lv in r["entities"].items() if lv == "required"}
            if names <= allowed and required <= names:
                ok = True
                break
        if not ok:
            probs.append(f"{rel}: no BIDS derivative rule for suffix {suffix!r}, extension {ext!r}, "
                         f"entities {sorted(keys)} in {datatype}/")
    return probs
