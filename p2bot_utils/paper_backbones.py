"""The paper's architectures with RANDOM weights, for the ``paper-dryrun`` profile (no hub here).

With ``P2BOT_BACKBONE_WEIGHTS=random`` in the environment (``run_all.sh --profile paper-dryrun`` sets it), the hub
ids ``openai-gpt`` and ``bert-base-uncased`` are not downloaded: they are built from their published
configurations with seeded random weights, so every code path the ``paper`` profile takes (GPT-1's tokenizer
without bos / eos / pad, 12 x 768 models, a full-BERT Receiver) runs on a CPU. Numbers from such models prove a
path, never the science; their ``config.p2bot_source`` starts with ``random-weights:`` and every table that
names its model says so.

| name                | built as                                                                          |
|---------------------|-----------------------------------------------------------------------------------|
| ``openai-gpt``      | ``OpenAIGPTLMHeadModel`` 12 layers, 12 heads, 768 wide, 512 positions; its own     |
|                     | ``OpenAIGPTTokenizer`` class on a BPE vocabulary and merges learnt here (below)   |
| ``bert-base-uncased`` | ``BertModel`` 12 x 768, 3072 inner, 512 positions; the uncased WordPiece        |
|                     | ``vocab.txt`` that ships with all-MiniLM-L6-v2 (the same 30,522 entries)          |

GPT-1's real vocabulary (40,478 BPE tokens learnt on BooksCorpus) is not shipped anywhere offline, so the BPE is
learnt (``tokenizers``, ``</w>`` word ends, lower-cased, BERT pre-tokenisation, as GPT-1's) from the whole words of
that uncased vocabulary plus the shipped sample's text: the same files on every machine, so the same tokenizer
whatever data a run reads. It keeps GPT-1's special-token properties: ``<unk>`` only, no bos, eos or pad.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from p2bot_utils.backbone_cache import build_atomically, cache_valid, resolve_cache_dir

WEIGHTS_ENV = "P2BOT_BACKBONE_WEIGHTS"
RANDOM_SEED = 0
GPT1_BPE_SIZE = 16_000  # the real openai-gpt vocabulary has 40,478 (not available offline)
OPENAI_GPT = dict(n_positions=512, n_embd=768, n_layer=12, n_head=12)  # openai-gpt's config.json
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512, type_vocab_size=2)  # bert-base-uncased's config.json
ARCHITECTURES = {"openai-gpt": "causal", "bert-base-uncased": "encoder"}
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"


def random_weights_requested(name: str) -> bool:
    """True for a paper architecture name while ``$P2BOT_BACKBONE_WEIGHTS`` is ``random``."""
    return name in ARCHITECTURES and os.environ.get(WEIGHTS_ENV, "").strip().lower() == "random"


def _corpus(bert_vocab: Path) -> list[str]:
    words = [w for w in bert_vocab.read_text(encoding="utf-8").split("\n")
             if w and not w.startswith(("##", "[")) and w != "<unk>"]
    sample = [line for f in sorted(SAMPLE_DIR.glob("*.txt")) for line in f.read_text(encoding="utf-8").splitlines()]
    return words + sample


def _corpus_identity(bert_vocab: Path) -> dict:
    digest = hashlib.sha256("\n".join(_corpus(bert_vocab)).encode("utf-8")).hexdigest()
    return {"kind": "gpt1-style-bpe", "bpe_size": GPT1_BPE_SIZE, "corpus_sha256": digest}


def _learn_gpt1_bpe(tmp: Path, bert_vocab: Path) -> dict:
    """A GPT-1-style BPE (vocab.json + merges.txt) learnt from ``_corpus``, saved as an ``OpenAIGPTTokenizer``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import OpenAIGPTTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.BertNormalizer(lowercase=True)  # GPT-1: lower-cased, BERT's basic tokenizer
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=GPT1_BPE_SIZE, special_tokens=["<unk>"], end_of_word_suffix="</w>",
                                  show_progress=False)
    bpe.train_from_iterator(_corpus(bert_vocab), trainer)
    raw = tmp / "bpe"
    raw.mkdir()
    vocab, merges = bpe.model.save(str(raw))
    OpenAIGPTTokenizer(vocab=vocab, merges=merges).save_pretrained(tmp)
    return {"learnt_from": f"whole words of {bert_vocab} + {SAMPLE_DIR.name}/*.txt"}


def gpt1_tokenizer(bert_vocab: Path, cache_dir=None):
    """GPT-1's tokenizer class on the locally learnt BPE (cached; about 1 s to learn)."""
    from transformers import OpenAIGPTTokenizer

    identity = _corpus_identity(bert_vocab)
    folder = resolve_cache_dir(cache_dir) / "openai-gpt-random-tokenizer"
    if not cache_valid(folder, identity):
        build_atomically(folder, lambda tmp: _learn_gpt1_bpe(tmp, bert_vocab), identity)
    return OpenAIGPTTokenizer.from_pretrained(folder)


def load_random(name: str, minilm_dir: Path, cache_dir=None, dtype=torch.float32):
    """``(model, tokenizer, tokenizer_name, source)`` of a paper architecture with seeded random weights."""
    from transformers import BertConfig, BertModel, BertTokenizer, OpenAIGPTConfig, OpenAIGPTLMHeadModel

    with torch.random.fork_rng(devices=[]):  # the same weights on every machine; the caller's RNG untouched
        torch.manual_seed(RANDOM_SEED)
        if name == "openai-gpt":
            tok = gpt1_tokenizer(minilm_dir / "vocab.txt", cache_dir)
            model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=len(tok), **OPENAI_GPT))
            tok_name = f"openai-gpt-style BPE ({len(tok)} tokens, learnt locally)"
        elif name == "bert-base-uncased":
            tok = BertTokenizer.from_pretrained(minilm_dir)  # the uncased bert-base WordPiece vocabulary
            model = BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **BERT_BASE))
            tok_name = "bert-base-uncased vocab.txt (shipped with all-MiniLM-L6-v2)"
        else:
            raise ValueError(f"paper_backbones: no paper architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    source = f"random-weights:{name} architecture, seed {RANDOM_SEED} ({WEIGHTS_ENV}=random), NOT pretrained"
    return model.to(dtype), tok, tok_name, source
