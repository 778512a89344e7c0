"""Specifications of the self-play rewards (paper Eq. 6-10), on hand-computed examples."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from p2bot_utils import rewards


class WordTokenizer:
    """A five-word tokenizer: enough to frame utterances for R1 without any downloaded vocabulary."""

    vocab = {"<s>": 0, "</s>": 1, "hi": 2, "i": 3, "like": 4, "dogs": 5}
    bos_token_id, eos_token_id = 0, 1

    def encode(self, text, add_special_tokens=False):
        return [self.vocab[w] for w in text.split()]


def _lm(uniform: bool) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=32, n_embd=8, n_layer=1, n_head=2))
    if uniform:  # tied embeddings at zero -> every logit is 0 -> p = 1/V for every token
        torch.nn.init.zeros_(lm.transformer.wte.weight)
    return lm.eval()


def test_eq8_mutual_persona_reward_on_a_hand_computed_three_turn_dialogue():
    # dialogue x1 a1 x2 a2 x3 a3 with r(x) = 9, 2, 4 and r(a) = 1, 3, 5; gamma = 0.5
    r_user = torch.tensor([[9.0, 2.0, 4.0]])
    r_agent = torch.tensor([[1.0, 3.0, 5.0]])
    # R3(a1) = 1 + .5*2 + .25*3 + .125*4 + .0625*5 ; R3(a2) = 3 + .5*4 + .25*5 ; R3(a3) = 5
    want = torch.tensor([[3.5625, 6.25, 5.0]])
    assert torch.allclose(rewards.mutual_persona_reward(r_user, r_agent, gamma=0.5), want)


def test_eq8_with_gamma_zero_is_the_own_score_and_the_first_user_turn_never_counts():
    r_agent = torch.tensor([[1.0, 3.0, 5.0], [0.0, 0.0, 0.0]])
    r_user = torch.tensor([[100.0, 2.0, 4.0], [100.0, 0.0, 0.0]])
    assert torch.equal(rewards.mutual_persona_reward(r_user, r_agent, gamma=0.0), r_agent)
    assert torch.equal(rewards.mutual_persona_reward(r_user, r_agent, gamma=1.0)[1], torch.zeros(3))


def test_eq8_rejects_mismatched_shapes_and_bad_gamma():
    with pytest.raises(ValueError, match="batch, turns"):
        rewards.mutual_persona_reward(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="gamma"):
        rewards.mutual_persona_reward(torch.zeros(2, 3), torch.zeros(2, 3), gamma=1.5)


def test_eq6_under_a_uniform_lm_is_minus_log_vocab_for_every_length_and_empty_replies_are_finite():
    r1 = rewards.language_style_reward(_lm(uniform=True), WordTokenizer(), ["hi", "i like dogs", ""])
    assert torch.allclose(r1, torch.full((3,), -math.log(8)))


def test_eq6_length_normalisation_divides_by_the_scored_tokens():
    lm, tok = _lm(uniform=False), WordTokenizer()
    texts = ["i like dogs", "hi"]
    mean = rewards.utterance_log_likelihood(lm, tok, texts)
    total = rewards.utterance_log_likelihood(lm, tok, texts, length_normalised=False)
    assert torch.allclose(total, mean * torch.tensor([4.0, 2.0]))  # words + the end token
    # padding does not leak: scoring one at a time gives the same numbers as scoring the batch
    alone = torch.cat([rewards.utterance_log_likelihood(lm, tok, [t]) for t in texts])
    assert torch.allclose(mean, alone, atol=1e-6)


def test_eq7_coherence_is_the_log_probability_or_the_codes_probability_minus_half():
    log_p = torch.log(torch.tensor([0.9, 0.25]))
    assert torch.equal(rewards.discourse_coherence_reward(log_p), log_p)
    assert torch.allclose(rewards.discourse_coherence_reward(log_p, "prob_minus_half"), torch.tensor([0.4, -0.25]))
    with pytest.raises(ValueError, match="mode"):
        rewards.discourse_coherence_reward(log_p, "prob")


def test_eq10_switching_terms_off_removes_exactly_those_terms():
    comps = {"r1": torch.tensor([1.0, 2.0]), "r2": torch.tensor([10.0, 20.0]), "r3": torch.tensor([100.0, 200.0])}
    w = rewards.PAPER_WEIGHTS
    assert torch.allclose(rewards.total_reward(comps, w, rewards.VARIANTS["p2bot"]), torch.tensor([51.4, 102.8]))
    assert torch.allclose(rewards.total_reward(comps, w, rewards.VARIANTS["rs1_rs2"]), torch.tensor([1.4, 2.8]))
    assert torch.allclose(rewards.total_reward(comps, w, rewards.VARIANTS["rs1"]), torch.tensor([0.4, 0.8]))
    only_r1 = {"r1": comps["r1"]}  # a switched-off term need not even be computed
    assert torch.equal(rewards.total_reward(only_r1, w, ("r1",)), rewards.total_reward(comps, w, ("r1",)))
    with pytest.raises(ValueError, match="no component"):
        rewards.total_reward(only_r1, w, ("r1", "r3"))


def test_minmax_normalisation_maps_the_batch_to_zero_two():
    out = rewards.normalise_persona_reward(torch.tensor([[1.0, 3.0], [5.0, 2.0]]), "minmax")
    assert torch.allclose(out, torch.tensor([[0.0, 1.0], [2.0, 0.5]]), atol=1e-5)
    assert torch.equal(rewards.normalise_persona_reward(torch.ones(2), "none"), torch.ones(2))


def test_repetition_penalty_is_the_max_cosine_to_an_earlier_utterance():
    emb = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    assert torch.allclose(rewards.repetition_penalty(emb), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
