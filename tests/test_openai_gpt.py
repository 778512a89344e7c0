"""openai-gpt with a KV cache (``openai_gpt``): the same numbers as Hugging Face's GPT-1, whole or one token at a
time, a left-padded row as its context alone, and a Transmitter on it saved and loaded with its cache."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig, OpenAIGPTConfig, OpenAIGPTLMHeadModel

from p2bot_utils.openai_gpt import CachedOpenAIGPTLMHeadModel, with_kv_cache


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, n_positions=64)).eval()
    return ref, with_kv_cache(copy.deepcopy(ref)).eval()


def test_same_logits_as_gpt1_with_and_without_a_cache(pair):
    ref, m = pair
    assert type(m) is CachedOpenAIGPTLMHeadModel and with_kv_cache(m) is m
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    full = ref(ids).logits
    torch.testing.assert_close(m(ids).logits, full, atol=1e-6, rtol=1e-6)
    first = m(ids[:, :7], use_cache=True)
    assert first.cache.get_seq_length() == 7
    torch.testing.assert_close(m(ids[:, 7:], cache=first.cache).logits, full[:, 7:], atol=1e-5, rtol=1e-5)
    assert first.cache.get_seq_length() == 12  # the cache grew by the 5 new tokens


def test_a_left_padded_row_equals_its_context_alone(pair):
    ref, m = pair
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # row 1: 5 real tokens, left-padded
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    alone = m(ids[1:, 4:]).logits[0, -1]
    torch.testing.assert_close(m(ids, attention_mask=mask, position_ids=pos).logits[1, -1], alone, atol=1e-5,
                               rtol=1e-5)
    cfg = GenerationConfig(max_new_tokens=3, do_sample=False, num_beams=1, pad_token_id=0, output_scores=True,
                           return_dict_in_generate=True)
    batched = m.generate(ids, attention_mask=mask, generation_config=cfg).scores[0][1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)  # generate() gives padded rows their positions
    torch.testing.assert_close(ref.generate(ids, attention_mask=mask, generation_config=cfg).scores[0][1], alone,
                               atol=1e-5, rtol=1e-5)  # as GPT-1 as shipped does


def test_generate_with_the_cache_equals_generate_without(pair):
    ref, m = pair
    ids = torch.randint(1, 50, (1, 8), generator=torch.Generator().manual_seed(3))
    cfg = GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=2, pad_token_id=0)
    assert torch.equal(m.generate(ids, generation_config=cfg), ref.generate(ids, generation_config=cfg))


def test_a_transmitter_on_gpt1_saves_and_loads_with_its_cache(tmp_path):
    from p2bot_utils.backbones import load_causal_lm
    from p2bot_utils.transmitter import Transmitter, TransmitterConfig

    _, tok = load_causal_lm("tiny-gpt2")
    torch.manual_seed(0)
    lm = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=len(tok), n_layer=1, n_head=2, n_embd=16, n_positions=64))
    t = Transmitter.from_backbone(lm, tok, TransmitterConfig(max_len=32, max_reply_tokens=8)).eval()
    assert t.supports_cache
    back = Transmitter.from_pretrained(t.save_pretrained(tmp_path / "m")).eval()
    assert type(back.lm) is CachedOpenAIGPTLMHeadModel and back.supports_cache
    ids = torch.randint(0, len(tok), (1, 10))
    torch.testing.assert_close(back.lm(ids).logits, t.lm(ids).logits)
