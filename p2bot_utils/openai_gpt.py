"""openai-gpt (GPT-1, the paper's Transmitter backbone) with a KV cache, position ids and 4-D masks.

Hugging Face's ``OpenAIGPTLMHeadModel`` keeps no KV cache, so ``generate()`` re-runs the whole prompt for every
new token (32 times for a 32-token reply), self-play sampling likewise, and it takes only a 2-D padding mask, so a
context's 20 candidates cannot share one run of the context (``packing``). ``with_kv_cache(lm)`` turns such a
model, in place and with the same parameters, into ``CachedOpenAIGPTLMHeadModel``, whose forward is GPT-1's
(post-LayerNorm blocks: ``n = ln_1(x + attn(x)); h = ln_2(n + mlp(n))``, scaled dot-product attention) with:

- ``cache`` (a ``DynamicCache``; ``use_cache``): each layer's keys and values are kept, as for GPT-2 / Llama;
- ``position_ids`` (generation computes them from the attention mask for left padding, as for GPT-2);
- ``attention_mask`` of 2-D (1 = real token; causal masking added) or 4-D additive (B, 1, T, past + T) shape, the
  latter for packed candidates (``packing``).

Without padding it computes what the original forward computes (tested to float tolerance; the original adds
-1e4 to masked scores, this one the dtype's minimum: both are exactly 0 after the softmax in fp32). Every other
module (tokenizer, saving, the state dict) is unchanged: a saved model loads back as ``OpenAIGPTLMHeadModel``
and ``with_kv_cache`` is applied again by the loaders (``backbones``, ``Transmitter.from_pretrained``).
"""
from __future__ import annotations

import math

import torch
from transformers import DynamicCache, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.openai.modeling_openai import OpenAIGPTLMHeadModel, OpenAIGPTModel


def _additive_mask(attention_mask, B: int, T: int, past: int, dtype, device) -> torch.Tensor:
    """(B or 1, 1, T, past + T) additive mask: causal over absolute positions, plus key padding (2-D input), or
    the caller's 4-D additive mask as is."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.to(dtype)
    q = torch.arange(past, past + T, device=device)[:, None]
    see = (torch.arange(past + T, device=device)[None, :] <= q)[None]  # (1, T, past + T)
    if attention_mask is not None:
        see = see & attention_mask.bool()[:, None, :]  # (B, T, past + T)
    return torch.zeros(see.shape, dtype=dtype, device=device).masked_fill(~see, torch.finfo(dtype).min)[:, None]


class CachedOpenAIGPTModel(OpenAIGPTModel):
    """``OpenAIGPTModel`` whose forward takes ``cache`` / ``use_cache``, ``position_ids`` and 4-D masks."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                inputs_embeds=None, token_type_ids=None, **kwargs) -> BaseModelOutputWithPast:
        emb = self.tokens_embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = emb.shape[:2]
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=emb.device)[None]
        h = emb + self.positions_embed(position_ids)
        if token_type_ids is not None:
            h = h + self.tokens_embed(token_type_ids)
        h = self.drop(h)
        mask = _additive_mask(attention_mask, B, T, past, h.dtype, h.device)
        for i, block in enumerate(self.h):
            attn = block.attn
            q, k, v = attn.c_attn(h).split(attn.split_size, dim=2)
            q, k, v = (t.view(B, T, attn.n_head, -1).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, d)
            if cache is not None:
                k, v = cache.update(k, v, i)
            w = q @ k.transpose(-1, -2)
            if attn.scale:
                w = w / math.sqrt(v.size(-1))
            p = attn.attn_dropout(torch.softmax(w + mask, dim=-1))
            a = attn.resid_dropout(attn.c_proj((p @ v).transpose(1, 2).reshape(B, T, -1)))
            n = block.ln_1(h + a)
            h = block.ln_2(n + block.mlp(n))
        return BaseModelOutputWithPast(last_hidden_state=h, cache=cache if (use_cache or past) else None)


class CachedOpenAIGPTLMHeadModel(OpenAIGPTLMHeadModel):
    """``OpenAIGPTLMHeadModel`` on ``CachedOpenAIGPTModel``, with the generic (GPT-2-like) generation inputs."""

    prepare_inputs_for_generation = GenerationMixin.prepare_inputs_for_generation

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                inputs_embeds=None, labels=None, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        out = self.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                               use_cache=use_cache, inputs_embeds=inputs_embeds)
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


def with_kv_cache(lm):
    """An ``OpenAIGPTLMHeadModel`` becomes ``CachedOpenAIGPTLMHeadModel`` in place (same parameters, nothing
    copied); any other model is returned unchanged."""
    if type(lm) is OpenAIGPTLMHeadModel:
        lm.__class__ = CachedOpenAIGPTLMHeadModel
        lm.transformer.__class__ = CachedOpenAIGPTModel
    return lm
