"""Pipeline input validation, progress reporting and the figure (no network needed)."""
import io
import json

import numpy as np
import pytest

from chisep.io import InputError
from chisep.pipeline import Maps, separate
from chisep.progress import make_progress, scaled


def _maps(**kw):
    shape = (8, 9, 10)
    base = dict(affine=np.diag([1.0, 1.0, 2.0, 1.0]), mask=np.ones(shape), local_field=np.zeros(shape))
    base.update(kw)
    return Maps(**base)


def test_maps_validation_and_r2prime():
    m = _maps(r2star=np.full((8, 9, 10), 30.0), r2=np.full((8, 9, 10), 18.0))
    np.testing.assert_allclose(m.r2prime, 12.0)
    np.testing.assert_allclose(m.voxel_size, [1, 1, 2])
    np.testing.assert_allclose(m.b0_dir, [0, 0, 1])
    with pytest.raises(InputError, match="same grid|one grid"):
        _maps(r2star=np.zeros((8, 9, 11)))
    with pytest.raises(InputError, match="NaN"):
        _maps(local_field=np.full((8, 9, 10), np.nan))
    with pytest.raises(InputError, match="empty"):
        _maps(mask=np.zeros((8, 9, 10)))


def test_separate_errors_name_the_fix():
    m = _maps(r2star=np.full((8, 9, 10), 30.0))
    with pytest.raises(InputError, match="chisepnet-r2star"):
        separate(m, "chisepnet-r2prime")
    with pytest.raises(InputError, match="unknown method"):
        separate(m, "magic")


def test_progress_json_lines_and_scaling():
    buf = io.StringIO()
    p = make_progress("json", stream=buf)
    s = scaled(p, 0.5, 1.0)
    s(0.0, "a")
    s(0.5, "b")
    s(2.0, "c")  # clipped
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [x["progress"] for x in lines] == [0.5, 0.75, 1.0]
    assert [x["message"] for x in lines] == ["a", "b", "c"]
    assert make_progress("none") is None
    with pytest.raises(ValueError):
        make_progress("loud")


def test_figure_is_written(tmp_path):
    from chisep.report import make_figure
    rng = np.random.default_rng(0)
    shape = (20, 24, 16)
    rows = {name: {k: rng.uniform(0, 0.1, shape).astype(np.float32) for k in ("chi_para", "chi_dia", "chi_total")}
            for name in ("truth", "method")}
    p = make_figure(rows, tmp_path / "f.png", mask=np.ones(shape), voxel_size=(1, 1, 2), title="t")
    from PIL import Image
    im = Image.open(p)
    assert im.size[0] > 1000 and im.size[1] > 300
