"""Files and weights a user can trust: every file the package writes is written atomically (a
failed write raises one FileWriteError line and leaves the older file intact), and non-finite
expert weights met while quantizing are named (layer, expert, matrix) in one clear error."""

from __future__ import annotations

import os

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.errors import CheckpointError, FileWriteError
from fiddler_nb.runtime.files import write_atomic, write_json


def test_write_json_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"v": 1})
    write_json(path, {"v": 2})
    assert path.read_text().strip().endswith("}") and '"v": 2' in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["a.json"], "no temporary file left"


def test_a_failed_write_keeps_the_old_file_and_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text("old")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FileWriteError, match="could not write report .*No space left") as info:
        write_atomic(path, "new", "report")
    assert "\n" not in str(info.value) and isinstance(info.value, fnb.FiddlerError)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_a_fiddler_error_and_the_device_survives():
    with pytest.raises(FileWriteError, match="/dev/full"):
        write_json("/dev/full", {"x": 1})
    assert not os.path.isfile("/dev/full"), "a device is written in place, never renamed over"


def test_every_writer_goes_through_the_helper(tmp_path, mixtral_path):
    """Profiles, plans, popularity, bench records and reports refuse an unwritable path the
    same way (a folder where the file should be)."""
    from fiddler_nb.benchmarks.records import save_records
    from fiddler_nb.benchmarks.report import Report

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "x").mkdir()  # the target is a folder: the rename fails
    target = blocked / "x"
    pop = fnb.Popularity(torch.ones(2, 2, dtype=torch.int64), 1, "test")
    for save in (lambda: pop.save(target), lambda: save_records([], target),
                 lambda: Report("t").write(target)):
        with pytest.raises(FileWriteError):
            save()
    assert target.is_dir() and not list(blocked.glob(".*tmp"))


def _poisoned(mixtral_path, tmp_path, value: float):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(mixtral_path, dtype=torch.float32)
    experts = model.model.layers[2].mlp.experts
    with torch.no_grad():
        experts.down_proj[5, 0, 3] = value  # layer 2, expert 5, down_proj
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_expert_weights_are_named_in_memory(mixtral_path, tmp_path, value):
    model = _poisoned(mixtral_path, tmp_path, value)
    with pytest.raises(CheckpointError, match="layer 2, expert 5, matrix down_proj"):
        fnb.from_model(model, expert_dtype="int8")


def test_non_finite_expert_weights_are_named_while_loading(mixtral_path, tmp_path):
    model = _poisoned(mixtral_path, tmp_path, float("nan"))
    out = tmp_path / "nan-ckpt"
    model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(mixtral_path).save_pretrained(out)
    with pytest.raises(CheckpointError, match=r"layer 2, expert 5, matrix down_proj holds 1 NaN"):
        fnb.load(out, expert_dtype="int4")
    fnb.load(out).close()  # without quantizing the checkpoint loads as it is
