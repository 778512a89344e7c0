"""Talking to P²Bot and watching it self-play (notebook 06, ``chat`` and ``watch``): real round trips through
saved smoke-sized model folders (tiny random GPT-2 / BERT, as the smoke profile trains), and one line on
stderr with exit code 2 for every bad model folder."""
from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from p2bot_utils import cli, data, plots, talk, watch  # noqa: E402
from p2bot_utils.receiver import Receiver, ReceiverConfig  # noqa: E402
from p2bot_utils.transmitter_train import build_transmitter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved folders of a smoke-sized Transmitter (NUP head), a −Next one and a Receiver."""
    root = tmp_path_factory.mktemp("models")
    build_transmitter("tiny-gpt2", "full", max_len=96, max_reply_tokens=8).save_pretrained(root / "transmitter")
    build_transmitter("tiny-gpt2", "no_next", max_len=96, max_reply_tokens=8).save_pretrained(root / "no_next")
    Receiver.from_backbone(ReceiverConfig(backbone="tiny-bert", max_length=24)).save_pretrained(root / "receiver")
    return root


@pytest.fixture(scope="module")
def sample():
    return data.load_split_data(None, use_sample=True, download=False)


def _cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "p2bot_utils", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


# --- the chat session -------------------------------------------------------------------------------------
def test_a_reply_carries_the_eq3_parts_of_every_beam_and_the_receiver_ranks_every_candidate(models, sample):
    pool = [e.sentences for e in sample.persona_pool]
    candidates = talk.candidate_personas(sample.persona_pool, 5, seed=0, first=[pool[3]])
    session = talk.ChatSession(talk.load_transmitter(models / "transmitter"), pool[0],
                               receiver=talk.load_receiver(models / "receiver"), candidates=candidates,
                               user_persona=0, alpha=0.1, num_beams=2, max_new_tokens=6)
    turn = session.say("  hi there ,   i love my parrot  ")
    assert turn.user == "hi there , i love my parrot"
    assert len(turn.beams) == len(turn.lm_norm) == len(turn.nup_logp) == len(turn.eq3) == 2
    for lm, nup, score in zip(turn.lm_norm, turn.nup_logp, turn.eq3):  # Eq. 3, part by part
        assert score == pytest.approx(0.1 * lm + 0.9 * nup)
        assert nup <= 0.0
    assert turn.chosen == max(range(2), key=lambda k: turn.eq3[k])
    assert turn.reply == turn.beams[turn.chosen]
    assert session.history == [turn.user, turn.reply]
    assert sorted(i for i, _ in turn.perception) == list(range(5))  # every candidate, best first
    assert [c for _, c in turn.perception] == sorted((c for _, c in turn.perception), reverse=True)
    assert 1 <= session.your_rank(turn) <= 5
    session.say("what do you do ?")
    assert session.said == [turn.user, "what do you do ?"] and len(session.history) == 4
    view = talk.turn_html(session, turn)
    assert "p2bot-reply" in view and "NUP log p(y=1)" in view and "yours ranks" in view
    session.reset()
    assert session.history == [] and session.turns == []


def test_minus_next_has_no_nup_part_and_eq2_chooses(models):
    session = talk.ChatSession(talk.load_transmitter(models / "no_next"), ["i like tea ."], max_new_tokens=4)
    turn = session.say("hello")
    assert turn.nup_logp is None and turn.eq3 == turn.lm_norm and turn.perception == []
    assert "n/a (−Next)" in talk.format_turn(session, turn)


def test_personas_typed_and_drawn():
    assert talk.parse_persona("i like cats . | i fly planes\n i sing ") == ("i like cats .", "i fly planes", "i sing")
    with pytest.raises(ValueError, match="at least one sentence"):
        talk.parse_persona(" | \n ")


def test_candidates_come_from_distinct_persona_groups(sample):
    cands = talk.candidate_personas(sample.persona_pool, 6, seed=1, first=[sample.persona_pool[0].sentences])
    group = {tuple(e.sentences): e.group for e in sample.persona_pool}
    assert cands[0] == tuple(sample.persona_pool[0].sentences) and len(cands) == 6
    assert len({group[c] for c in cands}) == 6
    assert cands == talk.candidate_personas(sample.persona_pool, 6, seed=1, first=[sample.persona_pool[0].sentences])


def test_model_names_resolve_under_run_paths_and_read_as_the_paper_names(tmp_path):
    from p2bot_utils.profile import RunPaths

    paths = RunPaths(tmp_path)
    assert talk.resolve_model("p2bot", paths) == paths.selfplay("p2bot")
    assert talk.resolve_model("full", paths) == paths.transmitter("full")
    assert talk.resolve_model("/some/folder", paths) == Path("/some/folder")
    assert talk.paper_label("full") == "P²Bot-S" and talk.paper_label("runs/demo/selfplay-rs1") == "+RS.1"
    assert talk.paper_label("runs/demo/transmitter-no_next") == "−Next"


@pytest.mark.parametrize("kind,loader", [("Transmitter", talk.load_transmitter), ("Receiver", talk.load_receiver)])
def test_a_missing_wrong_or_corrupt_folder_is_one_clear_error(models, tmp_path, kind, loader):
    with pytest.raises(talk.ModelFolderError, match="no such folder"):
        loader(tmp_path / "nope")
    with pytest.raises(talk.ModelFolderError, match=f"not a saved {kind}"):
        loader(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    marker = talk.MODEL_KINDS[kind][0]
    (broken / marker).write_text("{not json", encoding="utf-8")
    with pytest.raises(talk.ModelFolderError, match=f"cannot load the {kind}") as e:
        loader(broken)
    assert "\n" not in str(e.value)


# --- the REPL, in-process and through the command line ----------------------------------------------------
def test_repl_commands_persona_reset_quit(models, sample):
    session = talk.ChatSession(talk.load_transmitter(models / "transmitter"), ["i like tea ."], max_new_tokens=4)
    out: list[str] = []
    pool = [e.sentences for e in sample.persona_pool]
    n = talk.run_repl(session, ["hi", "", "/persona 2", "/persona i fly | i sing", "/help", "/nope", "yo", "/reset",
                                "/quit", "never answered"], out.append, pool)
    assert n == 2 and session.persona == ("i fly", "i sing") and session.history == []
    text = "\n".join(out)
    assert "bot persona: " + " | ".join(pool[2]) in text and "unknown command '/nope'" in text
    assert text.count("bot: ") == 2 and "never answered" not in text


def test_chat_answers_piped_input(models):
    res = _cli("chat", "--model", str(models / "transmitter"), "--receiver", str(models / "receiver"), "--you", "2",
               "--max-new-tokens", "4", stdin="hello , i have a parrot\nwhat do you like ?\n/quit\n")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("bot persona: ") and "you play: " in out
    assert out.count("\nbot: ") == 2 and out.count("Eq.3") == 4 and "yours ranks" in out


@pytest.mark.parametrize("command", ["chat", "watch"])
def test_a_missing_or_wrong_model_folder_is_one_line_and_exit_code_2(models, tmp_path, capsys, command):
    extra = ["--receiver", str(models / "receiver")] if command == "watch" else []
    cases = [([str(tmp_path / "missing"), *extra], "no such folder"),
             ([str(models / "receiver"), *extra], "not a saved Transmitter")]
    if command == "watch":
        cases.append(([str(models / "transmitter"), "--receiver", str(models / "transmitter")], "not a saved Receiver"))
    for args, said in cases:
        assert cli.main([command, "--model", *args]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"{command}: ") and said in err


def test_watch_writes_a_self_contained_transcript_with_the_heat_maps(models, tmp_path):
    out = tmp_path / "watch.html"
    res = _cli("watch", "--model", str(models / "transmitter"), "--before", str(models / "transmitter"),
               "--receiver", str(models / "receiver"), "--turns", "1", "--max-new-tokens", "4", "--seed", "3",
               "--html", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("A persona: ") == 2 and "reward" in res.stdout and "true persona rank" in res.stdout
    page = out.read_text(encoding="utf-8")
    assert page.count("<img ") == 2 and page.count("data:image/png;base64,") == 2  # after each of 2 utterances
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch
    assert "R, total reward" not in page and "r3" in page and "Persona guesses" in page
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


# --- watching, in-process -------------------------------------------------------------------------------
def test_watched_dialogue_is_judged_like_selfplay(models, sample):
    from p2bot_utils import rewards as rw, selfplay as sp
    from p2bot_utils.backbones import load_causal_lm

    model, receiver = talk.load_transmitter(models / "transmitter"), talk.load_receiver(models / "receiver")
    lm, tok = load_causal_lm("tiny-gpt2")
    judges = rw.RewardModels(lm, tok, model, receiver).frozen()
    config = sp.SelfPlayConfig.variant("p2bot", n_turns=2, max_new_tokens=4, n_dialogues=1, batch_size=1)
    setup = watch.draw_setup(sample.persona_pool, sp.opening_utterances(sample.train), seed=5, n_candidates=6)
    assert setup.candidates[:2] == [setup.persona_a, setup.persona_b] and len(setup.candidates) == 6
    w = watch.watch_dialogue("P²Bot-S", model, model, judges, setup, config)
    assert [who for who, _ in w.utterances] == ["A", "B", "A", "B"] and w.utterances[0][1] == setup.opening
    assert w.relevance.shape == (4, len(setup.persona_a) + len(setup.persona_b))
    U_a = receiver.relevance_matrix([t for _, t in w.utterances], setup.persona_a).numpy()
    assert w.relevance[:, :len(setup.persona_a)] == pytest.approx(U_a, abs=1e-5)
    row = w.rewards.iloc[0]  # Eq. 10 with the paper's λ
    assert row["reward"] == pytest.approx(0.4 * row["r1"] + 0.1 * row["r2"] + 0.5 * row["r3"], abs=1e-5)
    assert list(w.guesses.guesser) == ["B", "A"] and set(w.guesses["true persona rank"]) <= set(range(1, 7))
    again = watch.watch_dialogue("P²Bot-S", model, model, judges, setup, config)
    assert again.utterances == w.utterances  # same pair, opening and seed: the same dialogue
    assert w.labels(2) == [f"A1: {w.utterances[0][1]}", f"B1: {w.utterances[1][1] or '(empty)'}"]
    assert html.escape(setup.opening) in watch.render_html([w])


# --- figures ----------------------------------------------------------------------------------------------
def test_figures_use_the_paper_names_and_label_every_axis():
    import pandas as pd

    logs = {v: pd.DataFrame({"step": [1, 2], "lm_loss": [3.0, 2.5], "nup_loss": [2.1, 2.0]})
            for v in ("full", "no_persona")}
    logs["no_next"] = pd.DataFrame({"step": [1, 2], "lm_loss": [3.0, 2.6]})
    fig = plots.transmitter_loss_figure(logs, "softmax", 7)
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["P²Bot-S", "−Persona", "chance: ln(K+1) = ln 8"]
    assert fig.axes[1].lines[-1].get_ydata()[0] == pytest.approx(2.0794, abs=1e-4)
    assert plots.nup_chance_loss("binary", 1)[0] == pytest.approx(0.6931, abs=1e-4)
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    changes = pd.DataFrame({"variant": ["rs1", "rs1_rs2", "p2bot"] * 2, "metric": ["r3"] * 3 + ["reward"] * 3,
                            "change": [0.1, 0.2, 0.3] * 2, "change_se": [0.1] * 6})
    fig = plots.selfplay_eval_figure(changes, ["r3", "reward"])
    ticks = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["+RS.1", "+RS.1+RS.2", "P²Bot (+RS.1+RS.2+RS.3)"]
    assert all(ax.get_ylabel() for ax in fig.axes)
    ax = plots.relevance_heatmap([[0.1, 0.2]], ["hello"], ["a rather long persona sentence here", "short"])
    assert "\n" in ax.get_xticklabels()[0].get_text()  # wrapped, so neighbours do not overlap
    assert ax.figure.axes[-1].get_ylabel().startswith("relevance U")  # the colour bar


def test_tick_labels_wrap_between_words_never_inside_one():
    """The committed self-play figure showed "P²Bot (+RS.1+R / S.2+RS.3)": a paper name cut in the middle."""
    from p2bot_utils.plots import wrap_labels

    assert wrap_labels(["P²Bot (+RS.1+RS.2+RS.3)", "+RS.1", ""], 14) == ["P²Bot\n(+RS.1+RS.2+RS.3)", "+RS.1", ""]
    assert wrap_labels(["i like to hike with my two dogs"], 12) == ["i like to\nhike with my\ntwo dogs"]
