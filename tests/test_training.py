"""Specification of ``p2bot_utils.training``: a tiny MLP regression trained a few steps on CPU."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors import safe_open

from p2bot_utils.checkpoints import (
    load_checkpoint,
    load_state_dict_safetensors,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_checkpoint,
    save_state_dict_safetensors,
)
from p2bot_utils.training import TrainConfig, adam_impl, train

N_EXAMPLES = 42  # with batch_size 4: 11 micro-batches per epoch, the last one holding 2 examples


def make_examples(n: int = N_EXAMPLES) -> list[dict]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return [{"id": i, "x": x[i], "y": y[i]} for i in range(n)]


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # dropout makes the RNG state part of what a resume must restore
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))


def collate(batch: list[dict]) -> dict:
    return {"id": torch.tensor([b["id"] for b in batch]), "x": torch.stack([b["x"] for b in batch]),
            "y": torch.stack([b["y"] for b in batch])}


def mse_loss(model, batch, progress):
    pred = model(batch["x"]).squeeze(-1)  # (B,)
    return {"loss": torch.nn.functional.mse_loss(pred, batch["y"]), "mae": (pred - batch["y"]).abs().mean()}


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(lr=1e-2, num_epochs=3, batch_size=4, log_every=1, save_every=0, warmup_steps=1)
    return TrainConfig(out_dir=str(tmp_path / name), **{**base, **kw})


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def without_speed(rows):
    return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows]


def test_loss_decreases_and_every_parameter_changes(tmp_path):
    model = make_model()
    before = params_of(model)
    res = train(model, make_examples(), collate, mse_loss, config(tmp_path, num_epochs=8, log_every=11))
    assert res.steps == 8 * 11 and not res.stopped and res.resumed_from == 0
    assert res.log[-1]["loss"] < 0.5 * res.log[0]["loss"]
    assert all(not torch.equal(before[k], v) for k, v in params_of(model).items())


@pytest.mark.parametrize("grad_accum, save_every, stop, log_every", [
    (1, 4, 4, 1),  # killed right after a checkpoint
    (1, 4, 7, 1),  # killed 3 steps after the checkpoint at step 4: steps 5-7 are replayed
    (2, 3, 5, 2),  # accumulation; save_every does not divide the stop step; epoch boundary crossed;
                   # the checkpoint at step 3 holds a half-filled log window (rows at 2, 4, ...)
    (3, 2, 4, 1),  # 11 micro-batches, 3 per step: one micro-batch per epoch skipped
])
def test_kill_and_resume_is_bit_identical(tmp_path, grad_accum, save_every, stop, log_every):
    cfg = dict(grad_accum=grad_accum, save_every=save_every, log_every=log_every)
    full_model = make_model()
    full = train(full_model, make_examples(), collate, mse_loss, config(tmp_path, "full", **cfg))

    first = train(make_model(), make_examples(), collate, mse_loss, config(tmp_path, "cut", **cfg),
                  stop_after_steps=stop)
    assert first.stopped and first.steps == stop
    resumed_model = make_model(seed=99)  # a fresh object with other weights: everything comes from the checkpoint
    torch.manual_seed(12345)  # and another global RNG state: the checkpoint's must win
    resumed = train(resumed_model, make_examples(), collate, mse_loss, config(tmp_path, "cut", **cfg))

    assert resumed.resumed_from == stop - stop % save_every
    assert resumed.steps == full.steps and resumed.final_loss == full.final_loss
    for k, v in params_of(full_model).items():
        assert torch.equal(v, params_of(resumed_model)[k]), k
    assert without_speed(resumed.log) == without_speed(full.log)
    with open(tmp_path / "cut" / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [r["step"] for r in full.log]


def test_result_does_not_depend_on_the_global_rng_before_the_call(tmp_path):
    models = []
    for name, noise in (("a", 1), ("b", 2)):
        models.append(make_model())
        torch.manual_seed(noise)  # e.g. a notebook cell that sampled something in between
        train(models[-1], make_examples(), collate, mse_loss, config(tmp_path, name, num_epochs=1))
    assert all(torch.equal(v, params_of(models[1])[k]) for k, v in params_of(models[0]).items())


def test_finished_run_is_not_repeated_and_restores_weights(tmp_path):
    model = make_model()
    res = train(model, make_examples(), collate, mse_loss, config(tmp_path, num_epochs=1))
    again_model = make_model(seed=5)
    again = train(again_model, make_examples(), collate, mse_loss, config(tmp_path, num_epochs=1))
    assert again.resumed_from == res.steps == again.steps and again.final_loss == res.final_loss
    for k, v in params_of(model).items():
        assert torch.equal(v, params_of(again_model)[k])


def test_checkpoint_holds_no_pickle(tmp_path):
    train(make_model(), make_examples(), collate, mse_loss, config(tmp_path, num_epochs=1, save_every=5))
    ckpt = tmp_path / "run" / "checkpoint"
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["checkpoint_manifest.json", "log.csv", "model.safetensors", "optimizer.json",
                     "optimizer.safetensors", "rng-0.json", "rng-0.safetensors", "scheduler.json", "state.json"]
    for p in ckpt.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"
    with safe_open(str(ckpt / "optimizer.safetensors"), "pt") as f:
        assert {k.rsplit(".", 1)[1] for k in f.keys()} == {"step", "exp_avg", "exp_avg_sq"}
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["step"], state["epoch"], state["micro_batch"]) == (11, 0, 11)
    # the previous checkpoint is kept as the fallback; temporary and trash folders are gone
    assert [p.name for p in (tmp_path / "run").glob(".checkpoint.*")] == [".checkpoint.prev"]


def test_log_csv_columns_and_rows(tmp_path):
    log_csv = tmp_path / "logs" / "t.csv"
    res = train(make_model(), make_examples(), collate, mse_loss,
                config(tmp_path, num_epochs=2, log_every=4, log_csv=str(log_csv)))
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "mae", "grad_norm", "examples_per_s"]
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16, 20, 22]  # every 4 steps and the last one
    assert [float(r["epoch"]) for r in rows][-1] == 2.0 and len(res.log) == 6
    assert res.log[-1]["loss"] == pytest.approx(float(rows[-1]["loss"]))


def test_linear_warmup_then_decay_and_progress(tmp_path):
    seen = []

    def loss_fn(model, batch, progress):
        seen.append(progress)
        return mse_loss(model, batch, progress)

    res = train(make_model(), make_examples(24), collate, loss_fn,
                config(tmp_path, lr=0.1, num_epochs=1, warmup_steps=2))
    # 6 steps: factor s/2 while s < 2, then (6 - s) / (6 - 2)
    assert [r["lr"] for r in res.log] == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.05, 0.025])
    assert seen == [s / 6 for s in range(6)]


def test_constant_schedule_and_max_steps(tmp_path):
    res = train(make_model(), make_examples(), collate, mse_loss,
                config(tmp_path, scheduler="constant", warmup_steps=0, max_steps=15, num_epochs=1))
    assert res.steps == 15 and res.log[-1]["epoch"] == pytest.approx(1 + 4 / 11, abs=1e-4)
    assert {r["lr"] for r in res.log} == {0.01}


def test_each_epoch_is_a_seeded_permutation(tmp_path):
    def run(name, seed):
        ids = []

        def loss_fn(model, batch, progress):
            ids.extend(batch["id"].tolist())
            return mse_loss(model, batch, progress)

        train(make_model(), make_examples(10), collate, loss_fn, config(tmp_path, name, num_epochs=3, seed=seed))
        return [ids[i:i + 10] for i in range(0, 30, 10)]

    epochs = run("a", 0)
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs == run("b", 0) and epochs != run("c", 1)


def test_tied_weights_round_trip(tmp_path):
    emb = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = emb.weight  # tied, as GPT's lm_head and wte
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    path = save_state_dict_safetensors(model.state_dict(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == 1
    loaded = load_state_dict_safetensors(path)
    assert set(loaded) == {"emb.weight", "head.weight"} and torch.equal(loaded["head.weight"], emb.weight)
    fresh = torch.nn.ModuleDict({"emb": torch.nn.Embedding(5, 3), "head": torch.nn.Linear(3, 5, bias=False)})
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh["head"].weight, emb.weight)


def test_optimizer_state_round_trip():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
    tensors, meta = optimizer_state_to_tensors(opt.state_dict())
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    meta = json.loads(json.dumps(meta))  # must survive JSON
    fresh = torch.optim.AdamW(make_model(seed=1).parameters(), lr=0.5)
    fresh.load_state_dict(optimizer_state_from_tensors(tensors, meta))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["param_groups"][0]["betas"] == (0.9, 0.999)
    for pid, st in a["state"].items():
        assert all(torch.equal(v, b["state"][pid][k]) for k, v in st.items())


def test_save_and_load_checkpoint_helpers(tmp_path):
    model, opt = make_model(), None
    rows = [{"step": 1, "loss": 0.5, "dialogues": 8, "note": "hi, there", "lr": 1.0}, {"step": 2, "loss": None}]
    save_checkpoint(tmp_path / "ck", model, opt, None, {"step": 3, "log": rows})
    torch.manual_seed(7)
    expected = torch.rand(3)
    other = make_model(seed=2)
    state = load_checkpoint(tmp_path / "ck", other)
    assert state["step"] == 3 and state["log"] == [{**rows[0]}, {**rows[1], "dialogues": None, "note": None,
                                                                 "lr": None}]
    assert isinstance(state["log"][0]["lr"], float) and isinstance(state["log"][0]["dialogues"], int)
    assert all(torch.equal(v, params_of(model)[k]) for k, v in params_of(other).items())
    assert not torch.equal(torch.rand(3), expected)  # the RNG went back to the state at save time


def test_resume_with_other_hyper_parameters_is_refused(tmp_path):
    train(make_model(), make_examples(), collate, mse_loss, config(tmp_path, save_every=2), stop_after_steps=2)
    with pytest.raises(ValueError, match="batch_size=4 but this run has 8"):
        train(make_model(), make_examples(), collate, mse_loss, config(tmp_path, save_every=2, batch_size=8))


def test_resume_with_other_trainable_parameters_names_the_checkpoint(tmp_path):
    """A checkpoint left by a run that trained other layers is refused with a one-line, actionable error."""
    train(make_model(), make_examples(), collate, mse_loss, config(tmp_path, save_every=2), stop_after_steps=2)
    frozen_first = make_model()
    frozen_first[0].requires_grad_(False)
    with pytest.raises(ValueError, match="does not fit this run's trainable parameters.*delete"):
        train(frozen_first, make_examples(), collate, mse_loss, config(tmp_path, save_every=2))


def test_bad_loss_fn_and_too_few_examples(tmp_path):
    with pytest.raises(ValueError, match="key 'loss'"):
        train(make_model(), make_examples(), collate, lambda m, b, p: {"mse": m(b["x"]).sum()}, config(tmp_path))
    with pytest.raises(FloatingPointError, match="step 1"):
        train(make_model(), make_examples(), collate, lambda m, b, p: {"loss": m(b["x"]).sum() * float("nan")},
              config(tmp_path, "nan"))
    with pytest.raises(ValueError, match="2 examples cannot fill"):
        train(make_model(), make_examples(2), collate, mse_loss, config(tmp_path, "few", batch_size=1, grad_accum=4))


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("P2BOT_CPU_AUTOCAST", "1")  # forced: by default a CPU trains in fp32 (next test)
    res = train(make_model(), make_examples(), collate, mse_loss,
                config(tmp_path, mixed_precision="bf16", max_steps=3, num_epochs=1))
    assert res.steps == 3 and res.final_loss == res.final_loss  # finite, not NaN
    assert res.mixed_precision == "bf16"
    # a later run in full precision in the same process must work too
    assert train(make_model(), make_examples(), collate, mse_loss, config(tmp_path, "fp32", max_steps=1)).steps == 1


def test_a_cpu_trains_in_fp32_when_bf16_is_asked_and_says_so(tmp_path, monkeypatch, capsys):
    """bf16 autocast is a GPU speed feature; on a CPU it is emulated many times slower than fp32, so a CPU
    run of the paper profile (bf16) trains in fp32 and says so on stderr and in its result."""
    monkeypatch.delenv("P2BOT_CPU_AUTOCAST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = train(make_model(), make_examples(), collate, mse_loss,
                config(tmp_path, mixed_precision="bf16", max_steps=1, num_epochs=1))
    assert res.mixed_precision == "no"
    assert "training in fp32" in capsys.readouterr().err


@pytest.mark.parametrize("bad, match", [
    ({"lr": 0}, r"TrainConfig.lr=0.0: must be a finite number > 0"),
    ({"lr": "fast"}, r"TrainConfig.lr='fast': expected float"),
    ({"batch_size": 0}, r"TrainConfig.batch_size=0: must be >= 1"),
    ({"batch_size": 2.5}, r"TrainConfig.batch_size=2.5: expected int"),
    ({"grad_accum": 0}, r"TrainConfig.grad_accum=0"),
    ({"optimizer": "sgd"}, r"TrainConfig.optimizer='sgd': must be one of adamw, adam"),
    ({"scheduler": "cosine"}, r"TrainConfig.scheduler='cosine'"),
    ({"mixed_precision": "fp8"}, r"TrainConfig.mixed_precision='fp8'"),
    ({"optimizer_impl": "foreach"}, r"TrainConfig.optimizer_impl='foreach': must be one of fused, for_loop"),
    ({"num_epochs": 0}, r"TrainConfig.num_epochs=0: must be >= 1 \(or set max_steps > 0\)"),
    ({"max_steps": 0}, r"TrainConfig.max_steps=0"),
    ({"log_every": 0}, r"TrainConfig.log_every=0"),
    ({"out_dir": ""}, r"TrainConfig.out_dir='': must name a folder"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"out_dir": "runs/x", **bad})


def test_config_from_params_reads_prefixed_keys():
    params = {"seed": 7, "transmitter_lr": "6.25e-5", "transmitter_batch_size": 2.0, "transmitter_max_steps": None,
              "receiver_lr": 1.0, "transmitter_optimizer": "adam"}
    cfg = TrainConfig.from_params(params, "transmitter", out_dir="runs/t")
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.optimizer, cfg.seed) == (6.25e-5, 2, -1, "adam", 7)
    assert cfg.grad_accum == 1 and cfg.log_path.as_posix() == "runs/t/train_log.csv"
    assert TrainConfig.from_params({"receiver_seed": 3, "seed": 7}, "receiver_", out_dir="r").seed == 3
    with pytest.raises(ValueError, match="no 'receiver_out_dir' in params"):
        TrainConfig.from_params(params, "receiver_")
    with pytest.raises(TypeError, match="unknown override"):
        TrainConfig.from_params(params, "receiver_", out_dir="r", learning_rate=1)


def test_fused_and_for_loop_adamw_take_the_same_steps(tmp_path):
    """``optimizer_impl`` picks PyTorch's kernel, not the rule: both runs follow the same trajectory to float
    rounding."""
    runs = {}
    for impl in ("fused", "for_loop"):
        model = make_model()
        train(model, make_examples(), collate, mse_loss, config(tmp_path, impl, optimizer_impl=impl, weight_decay=0.01))
        runs[impl] = params_of(model)
    for k, v in runs["fused"].items():
        torch.testing.assert_close(v, runs["for_loop"][k], rtol=1e-4, atol=1e-5)
    assert adam_impl([torch.zeros(2, requires_grad=True)]) == {"fused": True}
    assert adam_impl([torch.zeros(2, requires_grad=True)], "for_loop") == {"foreach": False}
    assert adam_impl([torch.zeros(2, dtype=torch.long)]) == {"foreach": False}  # nothing to fuse: the loop
    with pytest.raises(ValueError, match="optimizer_impl='x': must be one of fused, for_loop"):
        adam_impl([], "x")
