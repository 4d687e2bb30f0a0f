"""``chisep train`` and ``chisep train-cache`` command lines: every training setting is declared once
(a :class:`chisep.training.config.TrainConfig` field) and reaches the config from the command line
with its default; the cache builder is a ``chisep`` subcommand (and ``python -m chisep.training.data``
the same command)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from chisep.cli import build_parser, main
from chisep.commands.train import NOT_OPTIONS, config_from_args
from chisep.commands.train_cache import seeds
from chisep.io import InputError
from chisep.options import flag, to_argv
from chisep.training.config import TrainConfig


def _parse(argv):
    return build_parser().parse_args(argv)


def _changed(f: dataclasses.Field):
    """A valid value of field ``f`` different from its default."""
    d, ch = f.default, f.metadata.get("choices")
    if ch:
        return next(c for c in ch if c != d)
    if isinstance(d, bool):
        return not d
    if isinstance(d, int):
        return d + 3
    if isinstance(d, float):
        return d * 2.0 + 0.25
    return {"device": "cpu", "cache": "some/cache"}[f.name]


def test_defaults_reach_the_config():
    cfg = config_from_args(_parse(["train", "--out", "runs/x"]))
    assert cfg == TrainConfig(out="runs/x")
    # and each option's parser default is the field's default
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_OPTIONS:
            continue
        assert actions[f.name].default == f.default, f.name
        assert flag(f) in actions[f.name].option_strings, f.name


def test_every_field_is_reachable_from_the_command_line():
    """A config with every option changed from its default -> argv (to_argv) -> parser -> the same
    config. Only ``out`` (--out, required) and ``init_norm`` (a dict for Python callers; the command
    line's counterpart is --init-weights) are set by the command itself."""
    fields = dataclasses.fields(TrainConfig)
    assert {f.name for f in fields if "help" not in f.metadata} == set(NOT_OPTIONS)
    changed = {f.name: _changed(f) for f in fields if f.name not in NOT_OPTIONS}
    cfg = TrainConfig(out="runs/y", **changed)
    argv = to_argv(cfg)
    assert "--no-flips" in argv and "--r2prime-input" in argv and "--scale-min" in argv
    back = config_from_args(_parse(["train", *argv]))
    assert back == cfg
    for name, v in changed.items():
        assert getattr(back, name) == v != getattr(TrainConfig(out="z"), name), name


def test_train_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NOT_OPTIONS:
            assert flag(f) in text, f.name
    assert "chisep train-cache" in text


def test_train_cache_command_parses(capsys):
    a = _parse(["train-cache", "--out", "runs/c", "--heads", "1000-1002,1010", "--val", "900",
                "--shapes", "5000-5001", "--size", "small", "--workers", "2", "--lesions", "7",
                "--add-lesions", "--predict-r2prime", "builtin"])
    assert (a.out, a.size, a.workers, a.lesions, a.add_lesions, a.predict_r2prime) == \
        ("runs/c", "small", 2, 7, True, "builtin")
    assert seeds(a.heads, "heads") == [1000, 1001, 1002, 1010]
    assert seeds(a.val, "val") == [900] and seeds(a.shapes, "shapes") == [5000, 5001]
    assert seeds(a.wide, "wide") == [] and a.wide_size == "small"
    with pytest.raises(SystemExit) as e:
        main(["train-cache", "--help"])
    assert e.value.code == 0
    assert "--predict-r2prime" in capsys.readouterr().out


def test_train_cache_bad_seeds_exit_2(tmp_path, capsys):
    with pytest.raises(InputError, match="--heads"):
        seeds("1000-x", "heads")
    out = tmp_path / "cache"
    assert main(["train-cache", "--out", str(out), "--heads", "10a0"]) == 2
    assert "--heads '10a0'" in capsys.readouterr().err
    assert not out.exists()


def test_module_entry_is_the_same_command():
    r = subprocess.run([sys.executable, "-m", "chisep.training.data", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: chisep train-cache")


def test_building_the_parser_does_not_import_torch():
    code = ("import sys; from chisep.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
