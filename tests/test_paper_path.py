"""Specification of the `paper` profile's own code paths, checked on a CPU without the hub (issue #14):
GPT-1's tokenizer (no bos / eos / pad) in R1, the paper architectures with random weights (`paper-dryrun`)."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

from p2bot_utils import backbones, lm_likelihood, paper_backbones, rewards


@pytest.fixture(scope="module")
def gpt1_tok(tmp_path_factory):
    """GPT-1's tokenizer class on a BPE learnt here: no bos, no eos, no pad (only <unk>)."""
    return paper_backbones.gpt1_tokenizer(backbones.minilm_path() / "vocab.txt", tmp_path_factory.mktemp("cache"))


def _gpt1(vocab: int, uniform: bool) -> OpenAIGPTLMHeadModel:
    torch.manual_seed(0)
    lm = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=1, n_head=2))
    if uniform:  # tied embeddings at zero -> every logit is 0 -> p = 1/V for every token
        torch.nn.init.zeros_(lm.transformer.tokens_embed.weight)
    return lm.eval()


def test_the_gpt1_style_tokenizer_keeps_gpt1s_special_token_properties(gpt1_tok):
    assert type(gpt1_tok).__name__ == "OpenAIGPTTokenizer"
    assert (gpt1_tok.bos_token, gpt1_tok.eos_token, gpt1_tok.pad_token, gpt1_tok.unk_token) == (None, None, None, "<unk>")
    assert gpt1_tok.tokenize("I love dogs.") == ["i</w>", "love</w>", "dogs</w>", ".</w>"]  # lower-cased, </w> ends


def test_eq6_r1_scores_a_tokenizer_without_bos_and_eos(gpt1_tok):
    """Issue #14 item 1: `_lm_inputs` raised on GPT-1's tokenizer (`selfplay_lm: openai-gpt`)."""
    lm = _gpt1(len(gpt1_tok), uniform=True)
    texts = ["i like dogs .", "hi", ""]
    r1 = rewards.language_style_reward(lm, gpt1_tok, texts)
    assert torch.allclose(r1, torch.full((3,), -math.log(len(gpt1_tok))))  # also one-token and empty ones: finite


def test_eq6_without_markers_the_first_token_is_context_and_the_rest_is_scored(gpt1_tok):
    lm = _gpt1(len(gpt1_tok), uniform=False)
    text = "i like my two dogs ."
    ids = gpt1_tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0], -1)  # (T, V)
    by_hand = sum(logp[t - 1, ids[t]] for t in range(1, len(ids)))  # |a| - 1 scored tokens, no end marker
    total = lm_likelihood.utterance_log_likelihood(lm, gpt1_tok, [text, "hi"], length_normalised=False)
    mean = lm_likelihood.utterance_log_likelihood(lm, gpt1_tok, [text, "hi"])
    assert torch.allclose(total[0], by_hand, atol=1e-5)
    assert torch.allclose(mean[0], by_hand / (len(ids) - 1), atol=1e-6)


def test_paper_architectures_with_random_weights_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv(paper_backbones.WEIGHTS_ENV, "random")
    gpt, tok = backbones.load_causal_lm("openai-gpt", cache_dir=tmp_path)
    bert, btok = backbones.load_encoder("bert-base-uncased", cache_dir=tmp_path)
    g, b = backbones.describe(gpt, tok), backbones.describe(bert, btok)
    assert (g["model_class"], g["n_layers"], g["hidden_size"], g["tokenizer_class"]) == (
        "OpenAIGPTLMHeadModel", 12, 768, "OpenAIGPTTokenizer")
    assert tok.eos_token is None and tok.bos_token is None and tok.pad_token == "<unk>"  # pad: _ensure_pad's unk
    assert (b["model_class"], b["n_layers"], b["hidden_size"], b["vocab_size"]) == ("BertModel", 12, 768, 30522)
    assert b["n_params"] == 109_482_240  # bert-base-uncased's exact parameter count
    assert g["source"].startswith("random-weights:") and b["source"].startswith("random-weights:")
    monkeypatch.setenv(paper_backbones.WEIGHTS_ENV, "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(backbones.BackboneUnavailable):  # without the switch: the hub, never silent random weights
        backbones.load_encoder("bert-base-uncased", cache_dir=tmp_path)


# --- item 3: the whole validation file (`eval_split: all`, `--split all`) ----------------------------------
def test_select_part_all_is_every_episode_of_the_validation_file():
    from p2bot_utils import data, data_split, sides

    split = data.load_split_data(use_sample=True, download=False)
    everything = data_split.select_part(split, "all")
    assert len(everything) == len(split.train) + len(split.dev) + len(split.test)
    assert len({e.episode_id for e in everything}) == len(everything)  # each episode once
    assert data_split.select_part(split, "dev") is split.dev
    side_split = sides.load_sides(None, "original", use_sample=True)
    assert len(data_split.select_part(side_split, "all")) == sum(side_split.info["sides"].values())

    class Official:  # a folder with a training file: `all` is the validation file (dev + test), not the train file
        train, dev, test, info = ["t1", "t2"], ["d1"], ["x1", "x2"], {"split_method": "official"}

    assert data_split.select_part(Official, "all") == ["d1", "x1", "x2"]
    with pytest.raises(ValueError, match="part must be one of"):
        data_split.select_part(split, "valid")


def test_split_all_on_the_dev_data_counts_every_turn_pair_and_every_side(real_data_dir):
    from p2bot_utils import data, data_split, sides

    for mode in ("original", "revised"):
        split = data.load_split_data(real_data_dir, mode=mode, download=False)
        episodes = data_split.select_part(split, "all")
        assert (len(episodes), sum(len(e.turns) for e in episodes)) == (812, 6337)  # the data's README
        assert len(data_split.select_part(sides.load_sides(real_data_dir, mode), "all")) == 2 * 812


@pytest.fixture
def real_data_dir():
    import os

    d = os.environ.get("P2BOT_DATA_DIR")
    if not d:
        pytest.skip("P2BOT_DATA_DIR is not set (the real ConvAI2 validation data)")
    return d


def test_evaluate_transmitter_and_probe_take_split_all(tmp_path, capsys, monkeypatch):
    import json

    from p2bot_utils import cli, data, transmitter_train

    folder = tmp_path / "tx"
    transmitter_train.build_transmitter("tiny-gpt2", "no_next", 128, 8).save_pretrained(folder)
    split = data.load_split_data(use_sample=True, download=False)
    n_turns = sum(len(e.turns) for part in (split.train, split.dev, split.test) for e in part)
    monkeypatch.delenv("P2BOT_DATA_DIR", raising=False)  # no data found: the shipped sample
    assert cli.main(["evaluate-transmitter", "--model", str(folder), "--split", "all",
                     "--no-generate", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["n_turns"], res["split"]) == (n_turns, "all")
    assert cli.main(["probe", "--receiver", "none", "--use-sample", "--split", "all", "--n-candidates", "4",
                     "--json"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text[text.find("{"):])
    assert out["part"] == "all" and {r["n"] for r in out["rows"]} == {sum(out["sides"].values())}


# --- item 6: `receiver_released_code: true` applies all of the released code's choices ----------------------
def test_receiver_released_code_is_not_overridden_by_the_paper_valued_keys():
    from p2bot_utils import profile, receiver
    from p2bot_utils.receiver_train import receiver_config_from_params

    params = profile.load_params("paper")  # margin 0.4, beta 1e-4, distractor persona: the paper's values
    code = receiver_config_from_params({**params, "receiver_released_code": True})
    want = receiver.ReceiverConfig.released_code()
    assert (code.margin, code.l1_beta, code.distractor) == (want.margin, want.l1_beta, want.distractor) == (
        0.5, 1e-2, "combination")
    assert (code.shared_encoder, code.utterance_reduce, code.score_agg) == (True, "sum", "max")
    assert code.backbone == params["receiver_backbone"] and code.tau_end == params["receiver_tau_end"]
    paper = receiver_config_from_params(params)  # off: the profile's keys, as notebook 02 always passed them
    assert paper == receiver.ReceiverConfig(
        backbone=params["receiver_backbone"], max_length=params["receiver_max_length"], margin=0.4, l1_beta=1e-4,
        tau_start=10.0, tau_end=0.5, score_tau=0.5, distractor="persona", train_layers=-1)


# --- the paper-dryrun profile: the paper profile, amounts aside --------------------------------------------
DRYRUN_AMOUNT_KEYS = {
    "transmitter_max_steps", "transmitter_no_next_max_steps", "transmitter_no_persona_max_steps",
    "transmitter_batch_size", "transmitter_grad_accum", "transmitter_eval_max_turns", "transmitter_eval_gen_turns",
    "receiver_max_steps", "receiver_batch_size", "selfplay_n_dialogues", "selfplay_batch_size",
    "selfplay_eval_dialogues", "selfplay_show_turns", "eval_max_turns", "eval_gen_turns", "eval_n_samples",
    "eval_human_n",
}


def test_paper_dryrun_equals_paper_except_the_named_amount_keys():
    from p2bot_utils import profile

    paper, dry = profile.load_params("paper"), profile.load_params("paper-dryrun")
    assert set(dry) == set(paper)  # `extends: paper`: keys added to paper.yaml flow in
    differ = {k for k in paper if paper[k] != dry[k]}
    assert differ == DRYRUN_AMOUNT_KEYS | {"profile"}, sorted(differ ^ (DRYRUN_AMOUNT_KEYS | {"profile"}))
    assert dry["profile"] == "paper-dryrun" and "extends" not in dry


def test_the_paper_profile_takes_the_papers_paths():
    """Items 2, 3, 4, 5 of issue #14, as profile values (each was wrong before)."""
    from p2bot_utils import profile

    p = profile.load_params("paper")
    assert p["selfplay_mode"] == p["transmitter_mode"] == "revised"  # self-play on the models' own personas
    assert p["eval_split"] == "all"  # Table 1 / 3: the whole validation file
    assert p["receiver_lr"] == p["transmitter_lr"] == 6.25e-5  # "for both Receiver and Transmitter"
    assert p["probe_mrr_pool"] == "all"  # Table 5 MRR against the complete set of profile sentences
    assert (p["transmitter_backbone"], p["selfplay_lm"], p["receiver_backbone"]) == (
        "openai-gpt", "openai-gpt", "bert-base-uncased")
    assert (p["transmitter_nup_distractors"], p["transmitter_nup_loss"], p["receiver_train_layers"]) == (1, "binary", -1)


def test_selfplay_reads_the_persona_mode_it_is_given():
    """Item 2: notebook 03 passes `selfplay_mode` to load_split_data (it used to always read original personas)."""
    import json
    from pathlib import Path

    cells = json.loads((Path(__file__).resolve().parent.parent / "notebooks" / "03_selfplay_rl.ipynb").read_text())
    code = "".join(s for c in cells["cells"] if c["cell_type"] == "code" for s in c["source"])
    assert "load_split_data(data_dir or None, mode=selfplay_mode" in code
