"""The checkpoint protocol under faults: a kill after any file operation of a save, once or twice in a row,
damaged files, and two runs on one folder. A kill is simulated by an exception raised from the save's hook
after that operation (nothing is cleaned up, as with SIGKILL); the next start must resume from the newest
complete checkpoint and end with the same weights as a run that was never interrupted."""
from __future__ import annotations

import json

import pytest
import torch

from p2bot_utils import checkpoints
from p2bot_utils.errors import CheckpointError, RunLockedError
from p2bot_utils.training import train

from test_training import collate, config, make_examples, make_model, mse_loss, params_of

SAVE_EVERY, EPOCHS = 2, 1  # 11 steps: saves after steps 2, 4, 6, 8, 10, 11
OPS = ["mkdir", "rng-0.safetensors", "rng-0.json", "model.safetensors", "optimizer.safetensors", "optimizer.json",
       "scheduler.json", "log.csv", "state.json", "manifest", "prev->trash", "current->prev", "tmp->current",
       "cleanup"]


class Killed(BaseException):
    """Not an Exception: nothing in the code under test may catch it (as with a real kill)."""


def _kill_at(op: str, save_number: int | None = None):
    """A hook that raises after ``op`` in the ``save_number``-th save of the run (1-based; None: the first save
    that performs ``op`` — a resumed run's first save may have no previous checkpoint to rotate)."""
    seen = {"saves": 0}

    def hook(name: str) -> None:
        if name == "mkdir":
            seen["saves"] += 1
        if name == op and save_number in (None, seen["saves"]):
            raise Killed(f"{op} of save {save_number}")
    return hook


def _run(tmp_path, name="run", hook=None, model_seed=0):
    model = make_model(model_seed)
    checkpoints._AFTER_OP = hook
    try:
        result = train(model, make_examples(), collate, mse_loss,
                       config(tmp_path, name, num_epochs=EPOCHS, save_every=SAVE_EVERY))
    finally:
        checkpoints._AFTER_OP = None
    return model, result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final weights, and the names of a save's file operations in order."""
    ops = []
    checkpoints._AFTER_OP = ops.append
    try:
        model = make_model()
        train(model, make_examples(), collate, mse_loss,
              config(tmp_path_factory.mktemp("ref"), num_epochs=EPOCHS, save_every=SAVE_EVERY))
    finally:
        checkpoints._AFTER_OP = None
    return params_of(model), ops


def _same_weights(model, want):
    return all(torch.equal(v, want[k]) for k, v in params_of(model).items())


def test_the_matrix_covers_every_file_operation_of_a_save(reference):
    _, ops = reference
    starts = [i for i, op in enumerate(ops) if op == "mkdir"]
    saves = [ops[a:b] for a, b in zip(starts, starts[1:] + [len(ops)])]
    assert len(saves) == 6 and saves[2] == OPS  # from the third save on, two older checkpoints are rotated
    assert saves[0] == [op for op in OPS if op not in ("prev->trash", "current->prev")]


@pytest.mark.parametrize("op", OPS)
def test_one_kill_after_any_operation_resumes_to_the_same_weights(tmp_path, reference, op):
    want, _ = reference
    with pytest.raises(Killed):
        _run(tmp_path, hook=_kill_at(op, save_number=3))
    model, result = _run(tmp_path, model_seed=7)
    assert result.resumed_from in (4, 6) and not result.stopped  # the save in flight finished or not
    assert _same_weights(model, want)


@pytest.mark.parametrize("op", OPS)
def test_two_kills_in_a_row_resume_to_the_same_weights(tmp_path, reference, op):
    want, _ = reference
    with pytest.raises(Killed):
        _run(tmp_path, hook=_kill_at(op, save_number=3))
    with pytest.raises(Killed):  # the restarted run is killed at the same place of its next save
        _run(tmp_path, hook=_kill_at(op), model_seed=3)
    model, result = _run(tmp_path, model_seed=7)
    assert result.resumed_from >= 4 and not result.stopped
    assert _same_weights(model, want)


@pytest.mark.parametrize("first, second", [("current->prev", "prev->trash"), ("manifest", "current->prev"),
                                           ("prev->trash", "tmp->current"), ("state.json", "manifest")])
def test_two_kills_at_different_operations(tmp_path, reference, first, second):
    want, _ = reference
    with pytest.raises(Killed):
        _run(tmp_path, hook=_kill_at(first))
    with pytest.raises(Killed):  # same initial weights: a kill in the first save leaves nothing to resume
        _run(tmp_path, hook=_kill_at(second))
    model, _ = _run(tmp_path)
    assert _same_weights(model, want)


def _stopped_run(tmp_path, steps=6):
    train(make_model(), make_examples(), collate, mse_loss,
          config(tmp_path, num_epochs=EPOCHS, save_every=SAVE_EVERY), stop_after_steps=steps)
    return tmp_path / "run" / "checkpoint"


@pytest.mark.parametrize("damage", ["zeros in the weights", "truncated weights", "empty optimizer",
                                    "truncated state", "truncated rng", "missing scheduler"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, reference, damage):
    want, _ = reference
    ckpt = _stopped_run(tmp_path)
    target = {"zeros in the weights": "model.safetensors", "truncated weights": "model.safetensors",
              "empty optimizer": "optimizer.safetensors", "truncated state": "state.json",
              "truncated rng": "rng-0.safetensors", "missing scheduler": "scheduler.json"}[damage]
    path = ckpt / target
    data = path.read_bytes()
    if damage == "zeros in the weights":  # same size, other content: only the hash can tell
        path.write_bytes(data[:-4096] + bytes(4096))
    elif damage == "missing scheduler":
        path.unlink()
    else:
        path.write_bytes(data[: len(data) // 2] if damage != "empty optimizer" else b"")
    with pytest.warns(UserWarning, match=f"skipped unfinished or damaged checkpoint.*{target}"):
        model, result = _run(tmp_path, model_seed=7)
    assert result.resumed_from == 4  # the previous checkpoint, not step 0
    assert _same_weights(model, want)


def test_all_checkpoints_damaged_is_an_error_not_a_silent_restart(tmp_path):
    ckpt = _stopped_run(tmp_path)
    for folder in (ckpt, ckpt.with_name(".checkpoint.prev")):
        (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no complete checkpoint.*model.safetensors.*delete"):
        _run(tmp_path)


def test_the_manifest_records_size_and_hash_of_every_file(tmp_path):
    ckpt = _stopped_run(tmp_path, steps=2)
    files = json.loads((ckpt / checkpoints.MANIFEST).read_text())["files"]
    assert set(files) == {p.name for p in ckpt.iterdir()} - {checkpoints.MANIFEST}
    assert all(f["size"] == (ckpt / n).stat().st_size and len(f["sha256"]) == 64 for n, f in files.items())
    assert checkpoints.checkpoint_problem(ckpt) is None


def test_a_second_run_on_the_same_folder_stops_at_once(tmp_path):
    with checkpoints.run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match="another run is writing there"):
            _run(tmp_path)
    _run(tmp_path)  # the lock is gone with its holder


def test_temporary_names_are_unique(tmp_path):
    """Two saves never share a temporary folder (a fixed name let two runs clobber each other)."""
    names = set()

    def record(op):
        if op == "mkdir":
            names.update(p.name for p in (tmp_path / "run").glob(".checkpoint.tmp-*"))
    _run(tmp_path, hook=record)
    assert len(names) == 6  # one per save
