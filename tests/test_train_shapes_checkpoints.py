"""scripts/train_shapes.py checkpoints: every save in a phase replaces the last one, atomically."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_shapes.py"


@pytest.fixture(scope="module")
def train_shapes():
    spec = importlib.util.spec_from_file_location("train_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def test_three_saves_in_a_row_leave_the_last_loadable_and_the_one_before_as_old(train_shapes, tmp_path):
    path = tmp_path / "run" / "vae"
    for step in (1, 2, 3):  # the third save once failed: ENOTEMPTY renaming onto a non-empty .old
        train_shapes.save_checkpoint(path, {"vae": weights(step)}, {"step": step})
    loaded = torch.nn.Linear(4, 3)
    assert train_shapes.load_checkpoint(path, {"vae": loaded})["step"] == 3
    assert torch.equal(loaded.weight, weights(3).weight)
    assert train_shapes.load_checkpoint(path.with_name("vae.old"), {"vae": loaded})["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["vae", "vae.old"]  # no temp folder left


def test_a_save_killed_between_its_renames_resumes_from_the_previous_checkpoint(train_shapes, tmp_path):
    path = tmp_path / "vae"
    train_shapes.save_checkpoint(path, {"vae": weights(1)}, {"step": 1})
    train_shapes.save_checkpoint(path, {"vae": weights(2)}, {"step": 2})
    # The state a kill leaves after save_checkpoint moved step 2 aside, before step 3 took its place:
    # a half-written temp folder and the previous checkpoint under .old.
    shutil.rmtree(path.with_name("vae.old"))
    os.replace(path, path.with_name("vae.old"))
    (tmp_path / "vae.tmp").mkdir()
    (tmp_path / "vae.tmp" / "vae.safetensors").write_bytes(b"half")
    assert train_shapes.has_checkpoint(path)
    assert train_shapes.load_checkpoint(path, {"vae": torch.nn.Linear(4, 3)})["step"] == 2
    train_shapes.save_checkpoint(path, {"vae": weights(3)}, {"step": 3})  # the stale temp folder is no obstacle
    assert train_shapes.load_checkpoint(path, {"vae": torch.nn.Linear(4, 3)})["step"] == 3
    assert not train_shapes.has_checkpoint(tmp_path / "never-saved")
