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

