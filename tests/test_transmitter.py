"""The Transmitter as a specification: layout, NUP head position, distractors, Eq. 3, save/load, resume, ranking."""
from __future__ import annotations

import copy
import dataclasses
import math
import os

import pytest
import torch

from p2bot_utils.checkpoints import CheckpointError
from p2bot_utils.data import Episode, Turn
from p2bot_utils.decoding import generate_replies, sample_replies, sequence_log_probs
from p2bot_utils.transmitter import (SpecialIds, Transmitter, build_inputs, eq3_scores, layout_batch,
                                     lm_log_likelihood, nup_log_prob)
from p2bot_utils.metrics import f1_score, rank_of_gold
from p2bot_utils.transmitter_eval import (evaluate_transmitter, rank_candidates, rank_candidates_per_pair,
                                          select_turns)
from p2bot_utils.transmitter_train import (TransmitterCollator, TransmitterLoss, build_transmitter,
                                           make_examples)

IDS = SpecialIds(persona=100, self_=101, partner=102, clf=103, pad=0)
PERSONAS = [["i like cats .", "i am a nurse ."], ["i hate rain ."], ["i play the guitar ."]]
HISTORIES = [["hi there", "hello ! how are you ?", "fine , thanks . and you ?"], [], ["what do you do ?"]]
REPLIES = ["i am great , my cat is sleeping .", "hello", "i play music all day long ."]


def _episode(eid: str, persona, replies, cands=()):
    turns = tuple(Turn(f"partner says {eid} {k}", r, tuple(cands)) for k, r in enumerate(replies))
    return Episode(eid, tuple(persona), (), turns, "sampled" if cands else "none")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_transmitter("tiny-gpt2", "full", max_len=64, max_reply_tokens=12).eval()


@pytest.fixture(scope="module")
def gpt1(tiny):
    """A tiny openai-gpt Transmitter (the paper's backbone family), with the KV cache of ``openai_gpt``."""
    from transformers import AutoTokenizer, OpenAIGPTConfig, OpenAIGPTLMHeadModel

    from p2bot_utils.transmitter import TransmitterConfig

    tok = AutoTokenizer.from_pretrained(tiny.tokenizer.name_or_path)
    tok.pad_token = tiny.tokenizer.pad_token
    torch.manual_seed(0)
    lm = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=len(tok), n_layer=2, n_head=2, n_embd=32, n_positions=128))
    return Transmitter.from_backbone(lm, tok, TransmitterConfig(max_len=64, max_reply_tokens=8)).eval()


# --- layout -----------------------------------------------------------------------------------------------
def test_layout_on_hand_written_ids():
    r = build_inputs([[1, 2], [3]], [[4, 5], [6], [7, 8]], [9, 10], IDS, max_len=64, max_reply_tokens=32)
    # persona, then history with speakers alternating backwards from the partner's last utterance, reply, clf
    assert r["input_ids"] == [100, 1, 2, 3, 102, 4, 5, 101, 6, 102, 7, 8, 101, 9, 10, 103]
    assert r["labels"] == [-100] * 13 + [9, 10, 103]  # Eq. 1 targets: reply tokens and the end/clf token
    assert r["clf_index"] == 15 and r["reply_start"] == 13


def test_layout_truncation_keeps_persona_and_drops_oldest_history_first():
    # budget for history = max_len - persona (4) - (max_reply_tokens + 2) = 13 - 4 - 4 = 5 tokens;
    # the history with its markers is [102 4 5] [101 6] [102 7 8] = 8 tokens: the oldest utterance goes
    r = build_inputs([[1, 2], [3]], [[4, 5], [6], [7, 8]], [9, 10, 11], IDS, max_len=13, max_reply_tokens=2)
    assert r["input_ids"] == [100, 1, 2, 3, 101, 6, 102, 7, 8, 101, 9, 10, 103]  # [4, 5] dropped, reply capped
    r = build_inputs([[1, 2], [3]], [[4, 5], [6], [7, 8, 9, 10]], [9], IDS, max_len=11, max_reply_tokens=2)
    assert r["input_ids"][:4] == [100, 1, 2, 3] and r["input_ids"][4:7] == [102, 9, 10]  # end of last utterance
    with pytest.raises(ValueError, match="max_len"):
        build_inputs([[1] * 10], [], [9], IDS, max_len=8, max_reply_tokens=2)


def test_layout_without_persona_and_as_generation_prompt():
    r = build_inputs([[1, 2]], [[4], [5]], [9], IDS, use_persona=False)  # Table 3: −Persona
    assert r["input_ids"] == [101, 4, 102, 5, 101, 9, 103]
    g = build_inputs([[1, 2]], [[4]], None, IDS)
    assert g["input_ids"] == [100, 1, 2, 102, 4, 101] and g["clf_index"] == -1 and set(g["labels"]) == {-100}


def test_layout_of_a_real_example_prints_and_uses_added_special_tokens(tiny):
    b = layout_batch(tiny, PERSONAS[:1], HISTORIES[:1], REPLIES[:1])
    tokens = tiny.tokenizer.convert_ids_to_tokens(b["input_ids"][0].tolist())
    print(" ".join(tokens))
    assert tokens[0] == "<persona>" and tokens[-1] == "<clf>"
    assert tokens.count("<partner>") == 2 and tokens.count("<self>") == 2
    assert tiny.lm.get_input_embeddings().weight.shape[0] == len(tiny.tokenizer)
    for tok in ("<persona>", "<self>", "<partner>", "<clf>"):
        assert len(tiny.tokenizer.encode(tok, add_special_tokens=False)) == 1


def test_clf_starts_as_the_backbones_end_token_so_replies_can_end(tiny):
    emb = tiny.lm.get_input_embeddings().weight
    eos = tiny.tokenizer.eos_token_id
    assert eos is not None and eos != tiny.ids.clf
    assert torch.equal(emb[tiny.ids.clf], emb[eos])
    assert not torch.equal(emb[tiny.ids.persona], emb[eos])  # the other markers keep their fresh rows
    h = torch.randn(3, emb.shape[1])
    logits = tiny.lm_logits(h)
    assert torch.allclose(logits[:, tiny.ids.clf], logits[:, eos])  # predicted wherever a text would end


def test_left_and_right_padding_give_the_same_head_logits_and_masks(tiny):
    right = layout_batch(tiny, PERSONAS, HISTORIES, REPLIES, side="right")
    left = layout_batch(tiny, PERSONAS, HISTORIES, REPLIES, side="left")
    assert right["attention_mask"].sum(-1).tolist() == left["attention_mask"].sum(-1).tolist()
    with torch.no_grad():
        outs = [tiny(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"], b["clf_index"])
                for b in (right, left)]
        alone = [tiny(**{k: v for k, v in layout_batch(tiny, [p], [h], [r]).items()
                         if k in ("input_ids", "attention_mask", "position_ids", "labels", "clf_index")})
                 for p, h, r in zip(PERSONAS, HISTORIES, REPLIES)]
    solo = torch.cat([a["nup_logits"] for a in alone])
    torch.testing.assert_close(outs[0]["nup_logits"], solo, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1]["nup_logits"], solo, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0]["lm_logits"], outs[1]["lm_logits"], atol=1e-4, rtol=1e-4)


# --- training pieces --------------------------------------------------------------------------------------
def test_distractor_is_never_the_gold_and_comes_from_another_episode(tiny):
    eps = [_episode("a", ["p a"], ["same reply", "reply a2"]), _episode("b", ["p b"], ["same reply", "reply b2"]),
           _episode("c", ["p c"], ["reply c1"])]
    enc = lambda t: tuple(tiny.tokenizer.encode(t, add_special_tokens=False))  # noqa: E731
    for seed in range(8):
        ex = make_examples(tiny.tokenizer, eps, seed=seed)
        assert len(ex) == 5 and all(len(e.distractors) == 1 and e.reply not in e.distractors for e in ex)
        assert enc("reply a2") not in ex[0].distractors  # episode "a" never draws its own replies
        for e in make_examples(tiny.tokenizer, eps, seed=seed, n_distractors=2):  # distinct, never the gold
            assert len(set(e.distractors)) == 2 and e.reply not in e.distractors
    assert make_examples(tiny.tokenizer, eps, seed=3) == make_examples(tiny.tokenizer, eps, seed=3)
    assert all(e.distractors == () for e in make_examples(tiny.tokenizer, eps[:1], n_distractors=0))
    with pytest.raises(ValueError, match="distinct replies in the other episodes"):
        make_examples(tiny.tokenizer, eps[:1])
    with pytest.raises(ValueError, match="distinct replies"):  # a's "same reply" turn: only "reply b2", "reply c1" left
        make_examples(tiny.tokenizer, eps, n_distractors=3)
    with pytest.raises(ValueError, match="n_distractors"):
        make_examples(tiny.tokenizer, eps, n_distractors=-1)


def test_collate_puts_lm_labels_on_gold_replies_only(tiny):
    eps = [_episode("a", ["p a"], ["one two"]), _episode("b", ["p b"], ["three four five"])]
    ex = make_examples(tiny.tokenizer, eps, seed=0)
    batch = dataclasses.replace(TransmitterCollator.for_model(tiny), shared_context=False)(ex)
    assert batch["nup_labels"].tolist() == [1, 0, 1, 0]  # context i: gold row 2i, its distractor 2i + 1
    assert (batch["labels"][1::2] == -100).all() and (batch["labels"][::2] != -100).any()
    clf = batch["input_ids"][torch.arange(4), batch["clf_index"]]
    assert (clf == tiny.ids.clf).all()
    out = TransmitterLoss()(tiny, batch, 0.0)
    assert set(out) == {"loss", "lm_loss", "nup_loss", "nup_acc"}
    torch.testing.assert_close(out["loss"], 0.6 * out["lm_loss"] + 0.4 * out["nup_loss"])
    shared = TransmitterCollator.for_model(tiny)(ex)  # tiny-gpt2 keeps a KV cache: contexts laid out once
    assert tiny.supports_cache and shared["input_ids"].shape[0] == 2 and shared["candidates"]["input_ids"].shape[0] == 4
    assert (shared["candidates"]["labels"][1::2] == -100).all()
    with pytest.raises(ValueError, match="nup_loss"):
        TransmitterLoss(nup_loss="hinge")
    with pytest.raises(ValueError, match="same number"):
        TransmitterCollator.for_model(tiny)([ex[0], dataclasses.replace(ex[1], distractors=())])


@pytest.mark.parametrize("k, nup_loss", [(1, "binary"), (3, "softmax"), (3, "binary")])
@pytest.mark.parametrize("backbone", ["tiny", "gpt1"])  # KV cache (GPT-2) | one full row per context (openai-gpt)
def test_shared_context_training_batch_gives_the_losses_and_gradients_of_full_rows(backbone, k, nup_loss, request):
    tiny = request.getfixturevalue(backbone)
    eps = [_episode(str(i), [f"i am person {i} .", "i like tea ."], [f"reply number {i} {j} ." for j in range(3)])
           for i in range(5)]
    ex = make_examples(tiny.tokenizer, eps, seed=1, n_distractors=k)[::3]
    loss_fn = TransmitterLoss(nup_loss=nup_loss)
    results = []
    for shared in (True, False):
        tiny.zero_grad()
        col = dataclasses.replace(TransmitterCollator.for_model(tiny), shared_context=shared)
        out = loss_fn(tiny, col(ex), 0.0)
        out["loss"].backward()
        results.append((out, tiny.head[1].weight.grad.clone(), tiny.lm.get_input_embeddings().weight.grad.clone()))
    tiny.zero_grad()
    (a, ga, ea), (b, gb, eb) = results
    for key in ("loss", "lm_loss", "nup_loss", "nup_acc"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ea, eb, atol=1e-5, rtol=1e-4)


class _FixedOutputs(torch.nn.Module):
    """Stands in for a Transmitter: returns given LM / NUP logits whatever the batch."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out


def test_nup_losses_on_a_hand_computed_example():
    import math

    # one LM target with p = 0.5 (two equal logits); two contexts x (gold, 2 distractors), gold in column 0
    out = {"lm_logits": torch.zeros(1, 2), "lm_targets": torch.tensor([0]),
           "nup_logits": torch.tensor([2.0, 0.0, 0.0, 0.0, 1.0, -1.0])}
    batch = {"input_ids": None, "attention_mask": None, "position_ids": None,
             "nup_labels": torch.tensor([1, 0, 0, 1, 0, 0])}
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: -log sigmoid(-x)
    binary = (sp(-2) + sp(0) + sp(0) + sp(0) + sp(1) + sp(-1)) / 6  # mean BCE over the six replies
    softmax = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (1 + math.e + math.exp(-1)))) / 2
    for kind, nup in (("binary", binary), ("softmax", softmax)):
        res = TransmitterLoss(nup_loss=kind)(_FixedOutputs(out), batch, 0.0)
        assert float(res["nup_loss"]) == pytest.approx(nup, rel=1e-6)
        assert float(res["lm_loss"]) == pytest.approx(math.log(2), rel=1e-6)
        assert float(res["loss"]) == pytest.approx(0.6 * math.log(2) + 0.4 * nup, rel=1e-6)
        assert float(res["nup_acc"]) == 0.5  # the first gold wins, the second loses to a distractor


def test_kill_and_resume_gives_the_same_final_loss(tmp_path):
    from p2bot_utils.training import TrainConfig, train

    eps = [_episode(str(i), [f"persona {i}"], [f"reply {i} {k}" for k in range(3)]) for i in range(4)]

    def run(out_dir, stop=None):
        model = build_transmitter("tiny-gpt2", "full", max_len=48, max_reply_tokens=8)
        cfg = TrainConfig(out_dir=str(out_dir), lr=1e-3, max_steps=4, batch_size=2, save_every=2, seed=0)
        ex = make_examples(model.tokenizer, eps, seed=0)
        res = train(model, ex, TransmitterCollator.for_model(model), TransmitterLoss(), cfg, stop_after_steps=stop)
        return res, model

    whole, m1 = run(tmp_path / "whole")
    killed, _ = run(tmp_path / "resumed", stop=2)
    resumed, m2 = run(tmp_path / "resumed")
    assert killed.stopped and resumed.resumed_from == 2 and resumed.steps == whole.steps == 4
    assert resumed.final_loss == pytest.approx(whole.final_loss, abs=1e-6)
    torch.testing.assert_close(m1.head[1].weight, m2.head[1].weight)


def test_a_checkpoint_of_other_nup_settings_is_not_resumed(tmp_path):
    from p2bot_utils import profile
    from p2bot_utils.transmitter_train import SETTINGS_FILE, TransmitterTrainConfig, train_variant

    def train_variant_(params, *args, **kw):
        return train_variant(TransmitterTrainConfig.from_params(params), *args, **kw)

    eps = [_episode(str(i), [f"persona {i}"], [f"reply {i} {k}" for k in range(3)]) for i in range(5)]
    params = {**profile.load_params("smoke"), "transmitter_max_steps": 2, "transmitter_save_every": 1,
              "transmitter_batch_size": 2, "transmitter_nup_distractors": 2}
    paths = profile.RunPaths(tmp_path)
    _, killed = train_variant_(params, eps, "full", paths, tmp_path, stop_after_steps=1, show_progress=False)
    assert killed.stopped and (tmp_path / "transmitter.train" / SETTINGS_FILE).is_file()
    with pytest.raises(ValueError, match="transmitter_nup_distractors=2 but this run has 3"):
        train_variant_({**params, "transmitter_nup_distractors": 3}, eps, "full", paths, tmp_path,
                      show_progress=False)
    model, resumed = train_variant_(params, eps, "full", paths, tmp_path, show_progress=False)
    assert resumed.resumed_from == 1 and resumed.steps == 2
    # the budget travels with the saved model (the resumed run counts its steps from the start)
    assert Transmitter.from_pretrained(paths.transmitter("full")).training_budget == {"optimizer_steps": 2}
    (tmp_path / "transmitter.train" / SETTINGS_FILE).unlink()  # a checkpoint from before the settings were kept
    with pytest.raises(ValueError, match="no variant_settings.json"):
        train_variant_(params, eps, "full", paths, tmp_path, show_progress=False)


# --- model folder ---------------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_logits(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "tx")
    back = Transmitter.from_pretrained(tmp_path / "tx")
    assert back.config == tiny.config and back.ids == tiny.ids
    assert back.training_budget == {} and not (tmp_path / "tx" / "training.json").exists()  # none recorded
    b = layout_batch(tiny, PERSONAS, HISTORIES, REPLIES)
    with torch.no_grad():
        a = tiny(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"], b["clf_index"])
        c = back(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"], b["clf_index"])
    assert torch.equal(a["lm_logits"], c["lm_logits"]) and torch.equal(a["nup_logits"], c["nup_logits"])
    with pytest.raises(ValueError, match="transmitter_config.json"):
        Transmitter.from_pretrained(tmp_path)


def test_no_next_variant_has_no_head(tmp_path):
    m = build_transmitter("tiny-gpt2", "no_next", max_len=64, max_reply_tokens=12)
    assert m.head is None
    with pytest.raises(ValueError, match="no NUP head"):
        nup_log_prob(m, PERSONAS, HISTORIES, REPLIES)
    m.training_budget = {"optimizer_steps": 7, "selfplay_updates": 2}
    m.save_pretrained(tmp_path / "nn")
    back = Transmitter.from_pretrained(tmp_path / "nn")
    assert back.head is None and back.training_budget == {"optimizer_steps": 7, "selfplay_updates": 2}
    (tmp_path / "nn" / "training.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="damaged Transmitter folder"):
        Transmitter.from_pretrained(tmp_path / "nn")


# --- decoding ---------------------------------------------------------------------------------------------
def test_eq3_chooses_by_the_mixed_score_on_a_hand_made_example():
    lm_norm = torch.tensor([[-1.0, -2.0]])  # beam 0 is more likely ...
    nup = torch.tensor([[-3.0, -0.1]])      # ... beam 1 is the better next utterance
    # alpha = 0.1: beam 0 -> 0.1 * -1 + 0.9 * -3 = -2.8; beam 1 -> 0.1 * -2 + 0.9 * -0.1 = -0.29
    torch.testing.assert_close(eq3_scores(lm_norm, nup, 0.1), torch.tensor([[-2.8, -0.29]]))
    assert eq3_scores(lm_norm, nup, 0.1).argmax(-1).item() == 1
    assert eq3_scores(lm_norm, nup, 1.0).argmax(-1).item() == 0  # Eq. 2
    with pytest.raises(ValueError, match="alpha"):
        eq3_scores(lm_norm, nup, 1.5)


def test_generate_returns_every_beam_and_the_eq3_choice(tiny):
    outs = generate_replies(tiny, PERSONAS, HISTORIES, num_beams=2, max_new_tokens=6, alpha=0.1,
                            batch_size=2, return_beams=True)
    assert len(outs) == 3
    for o in outs:
        assert len(o["beams"]) == 2 and o["reply"] == o["beams"][o["chosen"]]
        s = eq3_scores(torch.tensor(o["lm_norm"]), torch.tensor(o["nup_logp"]), 0.1)
        assert o["chosen"] == int(s.argmax())
    texts = generate_replies(tiny, PERSONAS, HISTORIES, max_new_tokens=6)
    assert texts == [o["reply"] for o in outs]


def test_alpha_from_a_profile_reaches_the_decoder(tiny):
    """Eq. 3's α is one profile key (transmitter_alpha) for notebooks 01 and 04: 1.0 picks by the LM alone
    (Eq. 2), 0.0 by the NUP head alone."""
    from p2bot_utils import profile
    from p2bot_utils.decoding import decoding_params

    params = profile.load_params("smoke")
    for alpha, key in ((1.0, "lm_norm"), (0.0, "nup_logp")):
        kw = decoding_params({**params, "transmitter_alpha": alpha})
        assert kw == {"alpha": alpha, "num_beams": 2, "max_new_tokens": 8}
        for o in generate_replies(tiny, PERSONAS, HISTORIES, batch_size=3, return_beams=True, **kw):
            assert o["chosen"] == int(torch.tensor(o[key]).argmax())
    with pytest.raises(ValueError, match="transmitter_alpha=1.5"):
        decoding_params({**params, "transmitter_alpha": 1.5})


def test_reply_ngram_bans_on_hand_made_replies():
    from p2bot_utils.decoding import reply_ngram_bans

    assert reply_ngram_bans([5, 6, 7, 5], 2) == {6}          # "5 6" seen, the reply ends in 5: 6 would repeat it
    assert reply_ngram_bans([5, 6, 5, 7, 5], 2) == {6, 7}
    assert reply_ngram_bans([5, 6, 7], 2) == set()
    assert reply_ngram_bans([1, 2, 3, 1, 2], 3) == {3}
    assert reply_ngram_bans([4, 4], 1) == {4} and reply_ngram_bans([], 2) == set()


def test_blocking_ngrams_keeps_every_beam_free_of_repeated_bigrams(tiny):
    from p2bot_utils.decoding import beam_candidates

    def repeats(block):
        beams = beam_candidates(tiny, PERSONAS, HISTORIES, num_beams=2, max_new_tokens=12, block_ngram=block)
        ids = [[t for t in r if t != tiny.ids.clf] for per_turn in beams for r in per_turn]
        return [len(list(zip(r, r[1:]))) - len(set(zip(r, r[1:]))) for r in ids]

    assert sum(repeats(0)) > 0  # the untrained tiny model loops without blocking
    assert repeats(2) == [0] * 6


def test_sampled_log_probs_are_recomputed_with_gradient(tiny):
    g = torch.Generator().manual_seed(0)
    s = sample_replies(tiny, PERSONAS, HISTORIES, max_new_tokens=6, temperature=0.8, top_k=50, generator=g)
    assert len(s.texts) == len(s.token_ids) == len(s.log_probs) == 3
    assert all(len(t) == len(lp) >= 1 for t, lp in zip(s.token_ids, s.log_probs))
    again = sequence_log_probs(tiny, PERSONAS, HISTORIES, s.token_ids, temperature=0.8, top_k=50)
    for a, b in zip(again, s.log_probs):
        assert a.requires_grad
        torch.testing.assert_close(a.detach(), b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="max_reply_tokens"):
        sample_replies(tiny, PERSONAS, HISTORIES, max_new_tokens=13)


def test_lm_log_likelihood_for_transmitter_and_plain_backbone(tiny):
    norm = lm_log_likelihood(tiny, PERSONAS, HISTORIES, REPLIES)
    total = lm_log_likelihood(tiny, PERSONAS, HISTORIES, REPLIES, length_normalised=False)
    assert norm.shape == (3,) and (total < norm).all()  # sums over several tokens are lower
    plain = lm_log_likelihood(tiny.lm, None, None, REPLIES, tokenizer=tiny.tokenizer)
    assert plain.shape == (3,) and torch.isfinite(plain).all()
    empty = lm_log_likelihood(tiny.lm, None, None, [""], tokenizer=tiny.tokenizer)
    assert torch.isfinite(empty).all() and (empty < 0).all()  # the end token is scored: no free 0 for silence
    with pytest.raises(ValueError, match="tokenizer"):
        lm_log_likelihood(tiny.lm, None, None, REPLIES)


def test_a_backbone_without_kv_cache_still_samples_ranks_and_generates(tiny, gpt1):
    from transformers.models.openai.modeling_openai import OpenAIGPTLMHeadModel, OpenAIGPTModel

    m = copy.deepcopy(gpt1)  # GPT-1 as Hugging Face ships it: no KV cache
    m.lm.__class__, m.lm.transformer.__class__ = OpenAIGPTLMHeadModel, OpenAIGPTModel
    assert not m.supports_cache and gpt1.supports_cache and tiny.supports_cache
    torch.testing.assert_close(rank_candidates(m, PERSONAS, HISTORIES, [["a b", r] for r in REPLIES])["nup"],
                               rank_candidates(gpt1, PERSONAS, HISTORIES, [["a b", r] for r in REPLIES])["nup"])
    s = sample_replies(m, PERSONAS, HISTORIES, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    for a, b in zip(sequence_log_probs(m, PERSONAS, HISTORIES, s.token_ids), s.log_probs):
        torch.testing.assert_close(a.detach(), b, atol=1e-4, rtol=1e-4)
    cached = sample_replies(gpt1, PERSONAS, HISTORIES, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    assert cached.token_ids == s.token_ids  # the same draws with and without the cache
    for a, b in zip(cached.log_probs, s.log_probs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    kw = dict(max_new_tokens=4, return_beams=True)
    one_by_one = [generate_replies(m, [p], [h], **kw)[0] for p, h in zip(PERSONAS, HISTORIES)]  # no padding
    for a, b in zip(generate_replies(gpt1, PERSONAS, HISTORIES, batch_size=3, **kw), one_by_one):  # cached, padded
        assert a["beams"] == b["beams"] and a["reply"] == b["reply"]
        torch.testing.assert_close(torch.tensor(a["lm_norm"]), torch.tensor(b["lm_norm"]), atol=1e-4, rtol=1e-4)


# --- evaluation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny", "gpt1"])  # KV cache (GPT-2) | one full row per context (openai-gpt)
def test_shared_context_ranking_equals_per_pair_scoring(backbone, request):
    model = request.getfixturevalue(backbone)
    cands = [["a b", "c d e", r] for r in REPLIES]
    shared = rank_candidates(model, PERSONAS, HISTORIES, cands, lm_rows="all")
    pair = rank_candidates_per_pair(model, PERSONAS, HISTORIES, cands)
    torch.testing.assert_close(shared["nup"], pair["nup"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared["lm_sum"], pair["lm_sum"], atol=1e-3, rtol=1e-5)
    assert torch.equal(shared["lm_n"], pair["lm_n"])
    gold = rank_candidates(model, PERSONAS, HISTORIES, cands, lm_rows="gold")
    torch.testing.assert_close(gold["lm_sum"][:, -1], pair["lm_sum"][:, -1], atol=1e-3, rtol=1e-5)


def test_evaluate_reports_counts_and_errors(tiny, tmp_path):
    cands = ("x y", "z", "w v u")
    eps = [_episode(str(i), [f"persona {i}"], [f"reply {i} {k}" for k in range(2)], cands) for i in range(3)]
    eps = [Episode(e.episode_id, e.own_persona, (), tuple(Turn(t.partner, t.reply, (*cands, t.reply))
                                                         for t in e.turns), "sampled") for e in eps]
    res = evaluate_transmitter(tiny, eps, max_turns=4, seed=0, gen_turns=2, max_new_tokens=4,
                               jsonl_path=tmp_path / "gen.jsonl", show_progress=False)
    assert res["n_turns"] == 4 and res["n_gen_turns"] == 2 and res["n_candidates"] == 4
    for key in ("hits@1", "mrr", "f1", "bleu"):
        assert 0.0 <= res[key] <= 1.0 and f"{key}_se" in res
    assert res["ppl_ci95"][0] <= res["ppl"] <= res["ppl_ci95"][1] and res["ranking"] == "nup"
    assert len((tmp_path / "gen.jsonl").read_text().splitlines()) == 2
    assert len(res["per_turn_rank"]) == 4 and len(res["per_turn_f1"]) == 2
    assert sum(r == 1 for r in res["per_turn_rank"]) / 4 == pytest.approx(res["hits@1"])
    assert sum(res["per_turn_f1"]) / 2 == pytest.approx(res["f1"])
    assert len(res["per_turn_nll"]) == len(res["per_turn_ntok"]) == 4   # the corpus ppl, turn by turn
    assert math.exp(sum(res["per_turn_nll"]) / sum(res["per_turn_ntok"])) == pytest.approx(res["ppl"])
    with pytest.raises(ValueError, match="candidates"):
        evaluate_transmitter(tiny, [_episode("n", ["p"], ["r"])], show_progress=False)


@pytest.mark.parametrize("name", ["tiny", "gpt1"])
def test_evaluation_sharing_each_context_gives_the_numbers_of_separate_ranking_and_generation(name, request):
    """evaluate_transmitter runs a context once for its ranking AND its reply, in length-sorted batches where
    only some rows generate: per turn, the rank, the gold's likelihood and the reply must be those of the
    plain references (one forward per (context, candidate) pair; one reply at a time), in the turns' order."""
    model = request.getfixturevalue(name)
    cands = ("x y", "z", "w v u")
    eps = [Episode(str(i), (f"persona {i}", "i like tea ."), (),
                   tuple(Turn(" ".join(["word"] * (1 + (3 * i + k) % 5)), f"reply {i} {k}", (*cands, f"reply {i} {k}"))
                         for k in range(3)), "sampled") for i in range(3)]
    res = evaluate_transmitter(model, eps, seed=0, gen_turns=5, batch_size=2, gen_batch_size=2, max_new_tokens=4,
                               show_progress=False)
    turns = select_turns(eps)
    nll, ntok = 0.0, 0
    for k, t in enumerate(turns):
        with torch.no_grad():
            ref = rank_candidates_per_pair(model, [t["persona"]], [t["history"]], [t["candidates"]])
        assert res["per_turn_rank"][k] == rank_of_gold(ref["nup"][0].numpy(), len(cands)), k
        nll, ntok = nll - float(ref["lm_sum"][0, -1]), ntok + int(ref["lm_n"][0, -1])
    assert res["ppl"] == pytest.approx(math.exp(nll / ntok), rel=1e-4)
    replies = [generate_replies(model, [t["persona"]], [t["history"]], max_new_tokens=4, batch_size=1)[0]
               for t in turns[:5]]
    assert res["per_turn_f1"] == pytest.approx([f1_score(r, [t["reply"]]) for r, t in zip(replies, turns)])


@pytest.mark.skipif(not os.environ.get("P2BOT_DATA_DIR"), reason="P2BOT_DATA_DIR not set (real data)")
def test_real_dev_turns_rank_and_lay_out(tiny):
    from p2bot_utils.data import load_split_data

    data = load_split_data(os.environ["P2BOT_DATA_DIR"], mode="revised", seed=0)
    res = evaluate_transmitter(tiny, data.dev, max_turns=2, seed=0, generate=False, show_progress=False)
    assert res["n_turns"] == 2 and res["n_candidates"] == 20
    b = layout_batch(tiny, [list(data.dev[0].own_persona)], [[data.dev[0].turns[0].partner]], ["ok"])
    assert b["input_ids"].shape[1] <= tiny.config.max_len


def test_paired_difference_is_the_mean_and_stderr_of_per_turn_differences():
    from p2bot_utils.transmitter_eval import paired_difference

    mean, se = paired_difference([0.5, 0.2, 0.9], [0.1, 0.2, 0.3])  # differences 0.4, 0.0, 0.6
    assert mean == pytest.approx(1.0 / 3)
    var = ((0.4 - 1 / 3) ** 2 + (0 - 1 / 3) ** 2 + (0.6 - 1 / 3) ** 2) / 2
    assert se == pytest.approx((var / 3) ** 0.5)
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0], [1.0, 2.0])



# --- decoding speed paths give the plain paths' results -------------------------------------------------
def _plain_beams(model, personas, histories, num_beams, max_new_tokens):
    """generate() on the full left-padded prompts, no prefilled cache: the reference."""
    from transformers import GenerationConfig

    from p2bot_utils.decoding import _split_reply, banned_ids
    from p2bot_utils.transmitter import layout_batch

    b = layout_batch(model, personas, histories, None, side="left")
    cfg = GenerationConfig(num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
                           max_new_tokens=max_new_tokens, min_new_tokens=1, eos_token_id=model.ids.clf,
                           pad_token_id=model.ids.pad, suppress_tokens=banned_ids(model), early_stopping=True)
    new = model.lm.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                            generation_config=cfg)[:, b["input_ids"].shape[1]:].tolist()
    return [[_split_reply(model, new[i * num_beams + k]) for k in range(num_beams)] for i in range(len(personas))]


@pytest.mark.parametrize("num_beams", [1, 2])
def test_beam_search_from_a_prefilled_context_equals_plain_generate(tiny, num_beams):
    from p2bot_utils.decoding import beam_candidates

    with torch.no_grad():
        assert beam_candidates(tiny, PERSONAS, HISTORIES, num_beams, 10) == \
            _plain_beams(tiny, PERSONAS, HISTORIES, num_beams, 10)


def test_rescoring_beams_from_the_context_cache_equals_full_rows(tiny):
    """score_on_context (context once, <self> + reply + <clf> per beam) = score_replies (one full row per
    pair), including a reply cut without <clf> and a one-token reply."""
    from p2bot_utils.decoding import prefill_contexts, score_on_context
    from p2bot_utils.transmitter import score_replies

    K = 2
    replies = [[5, 6, 7, tiny.ids.clf], [8], [9, 10, tiny.ids.clf], [11, 12, 13, 14, 15, 16], [17, tiny.ids.clf],
               [18, 19]]
    with torch.no_grad():
        b, cache = prefill_contexts(tiny, PERSONAS, HISTORIES)
        got = score_on_context(tiny, b, cache, replies)
        want = score_replies(tiny, [p for p in PERSONAS for _ in range(K)], [h for h in HISTORIES for _ in range(K)],
                             reply_ids=replies)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    assert got[1].tolist() == want[1].tolist() == [4, 2, 3, 7, 2, 3]
    torch.testing.assert_close(got[2], want[2], atol=1e-4, rtol=1e-4)


def test_length_sorted_batches_keep_every_reply_in_its_place(tiny):
    from p2bot_utils.decoding import context_lengths, length_sorted_chunks

    assert length_sorted_chunks([3, 9, 5, 9, 1], 2) == [[1, 3], [2, 0], [4]]
    lengths = context_lengths(tiny, PERSONAS, HISTORIES)
    assert len(lengths) == 3 and len(set(lengths)) > 1  # the fixture's contexts differ in length
    one_by_one = [generate_replies(tiny, [p], [h], max_new_tokens=6, return_beams=True)[0]
                  for p, h in zip(PERSONAS, HISTORIES)]
    batched = generate_replies(tiny, PERSONAS, HISTORIES, max_new_tokens=6, batch_size=2, return_beams=True)
    assert [o["beams"] for o in batched] == [o["beams"] for o in one_by_one]
    for a, b in zip(batched, one_by_one):
        assert a["chosen"] == b["chosen"]
        torch.testing.assert_close(torch.tensor(a["lm_norm"]), torch.tensor(b["lm_norm"]), atol=1e-4, rtol=1e-4)


def test_packed_candidates_see_the_context_and_only_themselves():
    from p2bot_utils.packing import pack_lists, packed_attention_mask

    pk = pack_lists([[5, 9], [6, 7, 9], [8, 9], [9]], C=2)
    assert pk["input_ids"].tolist() == [[5, 9, 6, 7, 9], [8, 9, 9, 0, 0]]
    assert pk["offsets"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 0, 0, 0]]
    assert pk["segment"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, -1, -1]]
    assert pk["clf"].tolist() == [[1, 4], [1, 2]]
    ctx_mask = torch.tensor([[1, 1], [0, 1]])  # row 1's context is left-padded
    see = packed_attention_mask(ctx_mask, pk["segment"], torch.float32)[:, 0] == 0  # (B, Tp, Tc + Tp)
    assert see[0].int().tolist() == [[1, 1, 1, 0, 0, 0, 0],   # 5: context + itself
                                     [1, 1, 1, 1, 0, 0, 0],   # 9 (<clf> of candidate 0)
                                     [1, 1, 0, 0, 1, 0, 0],   # 6: not candidate 0
                                     [1, 1, 0, 0, 1, 1, 0],
                                     [1, 1, 0, 0, 1, 1, 1]]
    assert see[1].int().tolist()[2:] == [[0, 1, 0, 0, 1, 0, 0],  # the padded context token is never seen
                                         [0, 1, 0, 0, 0, 0, 0],  # padding queries: the context only
                                         [0, 1, 0, 0, 0, 0, 0]]


def test_packed_ranking_without_a_head_and_gold_only_rows(tiny):
    from p2bot_utils.transmitter import TransmitterConfig

    cands = [["a b", "c d e", r] for r in REPLIES]
    nn_model = Transmitter.from_backbone(tiny.lm, tiny.tokenizer, TransmitterConfig(use_nup_head=False, max_len=64,
                                                                                    max_reply_tokens=12)).eval()
    packed = rank_candidates(nn_model, PERSONAS, HISTORIES, cands, lm_rows="all")
    pair = rank_candidates_per_pair(nn_model, PERSONAS, HISTORIES, cands)
    assert packed["nup"] is None
    torch.testing.assert_close(packed["lm_sum"], pair["lm_sum"], atol=1e-3, rtol=1e-5)
    gold = rank_candidates(tiny, PERSONAS, HISTORIES, cands, lm_rows="gold")
    assert torch.isnan(gold["lm_sum"][:, :-1]).all() and (gold["lm_n"][:, :-1] == 0).all()
    assert rank_candidates(tiny, PERSONAS, HISTORIES, cands, lm_rows="none")["lm_n"].sum() == 0
