"""Several processes (issue #14): ``accelerate launch --multi_gpu --num_processes 2 -m p2bot_utils
train-transmitter`` with ``ACCELERATE_USE_CPU=1`` (two CPU processes, gloo) on the smoke profile trains the same
model as one process with the same global batch, and resumes.

Careful: ``accelerate launch --cpu --num_processes 2`` (accelerate 1.x) starts ONE process (its "simple
launcher"; several CPU processes there need MPI). ``--multi_gpu`` starts them through torchrun, and
``ACCELERATE_USE_CPU=1`` makes each one join a gloo process group on the CPU (MULTI_CPU) instead of falling back
to a lone process when no GPU is found. The test checks from the training log that two processes really ran.

Why they can be equal: ``training.train`` gives process r the micro-batches ``first + r*grad_accum ...`` of each
step, so 2 processes x ``grad_accum`` 1 see exactly the micro-batches of 1 process x ``grad_accum`` 2, and the
gradient is the mean over the two in both cases (DDP averages, accelerate divides by ``grad_accum``). Dropout
would draw different masks per process, so the model here is the smoke profile's tiny GPT-2 saved with every
dropout at 0 and the NUP head's dropout off (``transmitter_head_dropout: 0``).
"""
from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
STEPS = 3

STOP_SCRIPT = """
import sys
from p2bot_utils import data, profile
from p2bot_utils.transmitter_train import TransmitterTrainConfig, train_variant
params = profile.load_params(sys.argv[1])
split = data.load_split_data(use_sample=True, mode=params["transmitter_mode"])
paths = profile.RunPaths(profile.runs_dir(params["profile"], "sample"))
results, _ = profile.output_dirs(params["profile"], "sample")
_, result = train_variant(TransmitterTrainConfig.from_params(params), split.train, "full", paths, results,
                          stop_after_steps=int(sys.argv[2]), show_progress=False)
assert result.stopped
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
            "ACCELERATE_DISABLE_RICH": "1", "ACCELERATE_USE_CPU": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], procs: int, timeout: int = 300) -> None:
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"


def _profile(tmp: Path, backbone: Path, grad_accum: int, name: str) -> Path:
    """A smoke profile named ``name``: its models go to runs/<name>-sample/, its log to results/<name>-sample/."""
    path = tmp / f"{name}.yaml"
    path.write_text(f"extends: {ROOT / 'configs' / 'smoke.yaml'}\nprofile: {name}\ntransmitter_backbone: {backbone}\n"
                    f"transmitter_head_dropout: 0.0\ntransmitter_max_steps: {STEPS}\ntransmitter_save_every: 1\n"
                    f"transmitter_grad_accum: {grad_accum}\n")
    return path


def _train_cli(profile: Path, procs: int) -> dict[str, torch.Tensor]:
    args = ["-m", "p2bot_utils", "train-transmitter", "--config", str(profile)]
    if procs == 1:
        out = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-4000:]
    else:
        _launch(args, procs)
    return load_file(str(ROOT / "runs" / f"{profile.stem}-sample" / "transmitter" / "model.safetensors"))


@pytest.fixture(scope="module")
def no_dropout_backbone(tmp_path_factory) -> Path:
    from p2bot_utils.backbones import load_causal_lm

    model, tok = load_causal_lm("tiny-gpt2")
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    folder = tmp_path_factory.mktemp("tiny-gpt2-no-dropout")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def names():
    """Unique profile names; their runs/ and results/ folders are removed afterwards."""
    tag = f"acctest{os.getpid()}"
    names = {k: f"{tag}-{k}" for k in ("one", "two", "resumed")}
    yield names
    for n in names.values():
        for top in ("runs", "results", "figures"):
            shutil.rmtree(ROOT / top / f"{n}-sample", ignore_errors=True)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed beside python")
def test_two_processes_equal_one_with_the_same_global_batch_and_resume(no_dropout_backbone, tmp_path, names):
    one = _train_cli(_profile(tmp_path, no_dropout_backbone, 2, names["one"]), procs=1)
    two = _train_cli(_profile(tmp_path, no_dropout_backbone, 1, names["two"]), procs=2)
    assert one.keys() == two.keys()
    logs = [list(csv.DictReader((ROOT / "results" / f"{names[r]}-sample" / "transmitter_log.csv").open()))
            for r in ("one", "two")]
    assert [r["epoch"] for r in logs[0]] == [r["epoch"] for r in logs[1]]  # 2 micro-batches a step: 2 processes ran
    for a, b in zip(*logs):
        assert abs(float(a["loss"]) - float(b["loss"])) < 1e-4 and abs(float(a["lm_loss"]) - float(b["lm_loss"])) < 1e-4
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=f"{k}: 2 processes != 1")
    # resume with two processes: stop after 1 step (a checkpoint per step), then the command line finishes
    resumed_profile = _profile(tmp_path, no_dropout_backbone, 1, names["resumed"])
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    _launch([str(script), str(resumed_profile), "1"], 2)
    runs = ROOT / "runs" / f"{names['resumed']}-sample"
    assert (runs / "transmitter.train" / "checkpoint").exists() and not (runs / "transmitter").exists()
    resumed = _train_cli(resumed_profile, procs=2)
    for k in one:
        torch.testing.assert_close(resumed[k], two[k], rtol=1e-5, atol=1e-6, msg=f"{k}: resumed != uninterrupted")
