"""Specification of ``p2bot_utils.backbones``: offline names, the SmolLM2 cache, tiny models, hub failures.

Everything runs offline against a temporary cache. The SmolLM2 GGUF conversion (about 20 s on 2 CPU
cores) happens ONCE for this module, in the ``smollm2_folder`` fixture.
"""
import json
import os

import pytest
import torch

from p2bot_utils import backbones as B


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("p2bot_cache")


@pytest.fixture(scope="module")
def gguf_model():
    return B.load_smollm2_gguf()  # straight from the GGUF, never saved


@pytest.fixture(scope="module")
def smollm2_folder(cache, gguf_model):
    return B.smollm2_cache(cache, gguf_model=gguf_model)


# --- tiny models (smoke profile) -------------------------------------------------------------------
def test_tiny_gpt2_forward_pad_and_hand_counted_params(cache):
    model, tok = B.load_causal_lm("tiny-gpt2", cache_dir=cache)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    batch = tok(["hello there", "i like dogs a lot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    # wte 49152*64 + wpe 512*64 + 2 layers * 49,984 + ln_f 128 (lm_head tied to wte)
    info = B.describe(model, tok)
    assert info["n_params"] == 49152 * 64 + 512 * 64 + 2 * 49_984 + 128 == 3_278_592
    assert (info["backbone"], info["tokenizer"], info["vocab_size"]) == ("tiny-gpt2", "smollm2-135m", 49152)
    assert not model.training


def test_tiny_models_are_seeded_and_leave_global_rng_alone(cache):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = B.load_encoder("tiny-bert", cache_dir=cache)
    b, _ = B.load_encoder("tiny-bert", cache_dir=cache)
    assert torch.equal(torch.rand(3), expected_next)  # building the model did not consume the caller's RNG
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_tiny_bert_forward_and_hand_counted_params(cache):
    model, tok = B.load_encoder("tiny-bert", cache_dir=cache)
    assert tok.pad_token == "[PAD]"
    batch = tok(["hello there", "a longer sentence here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 64)
    # embeddings 30522*64 + 512*64 + 2*64 + LN 128; per layer 33,472; pooler 64*64+64
    embeddings = 30522 * 64 + 512 * 64 + 2 * 64 + 128
    assert B.describe(model, tok)["n_params"] == embeddings + 2 * 33_472 + 4_160 == 2_057_536


def test_dtype_option(cache):
    model, _ = B.load_causal_lm("tiny-gpt2", cache_dir=cache, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float13'"):
        B.load_causal_lm("tiny-gpt2", cache_dir=cache, dtype="float13")


def test_local_folder_round_trip_keeps_backbone_name(cache, tmp_path):
    model, tok = B.load_causal_lm("tiny-gpt2", cache_dir=cache)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    again, tok2 = B.load_causal_lm(str(tmp_path / "ckpt"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert again.config.p2bot_backbone == "tiny-gpt2"
    assert B.guess_kind(str(tmp_path / "ckpt")) == "causal"
    assert tok2.pad_token == tok.pad_token


# --- packaged pretrained models --------------------------------------------------------------------
def test_minilm_loads_and_runs():
    model, tok = B.load_encoder("minilm-l6")
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    assert tok.pad_token == "[PAD]" and tok("Hello")["input_ids"] == tok("hello")["input_ids"]  # uncased
    with torch.no_grad():
        out = model(**tok(["hello world"], return_tensors="pt")).last_hidden_state
    assert out.shape == (1, 4, 384)  # [CLS] hello world [SEP]


def test_smollm2_cache_is_complete_and_marked(smollm2_folder):
    marker = json.loads((smollm2_folder / B.CACHE_MARKER).read_text())
    assert marker["n_params"] == 134_515_008 and len(marker["gguf_sha256"]) == 64
    assert (smollm2_folder / "model.safetensors").is_file() and (smollm2_folder / "tokenizer.json").is_file()
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert not [p for p in smollm2_folder.parent.iterdir() if ".tmp-" in p.name]  # no leftovers


def test_smollm2_cached_logits_equal_gguf_logits(smollm2_folder, cache, gguf_model):
    model, tok = B.load_causal_lm("smollm2-135m", cache_dir=cache)  # reads the cache folder from disk
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    ids = tok(["My favourite food is pizza, and I"], return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        cached_logits, gguf_logits = model(input_ids=ids).logits, gguf_model(input_ids=ids).logits
    assert torch.equal(cached_logits, gguf_logits)
    assert model.config.p2bot_backbone == "smollm2-135m" and B.describe(model, tok)["n_params"] == 134_515_008
    # tiny-gpt2 now reads the same tokenizer from the full cache
    assert (smollm2_folder / "tokenizer.json").read_bytes() == (
        B._smollm2_tokenizer_dir(cache) / "tokenizer.json").read_bytes()


# --- the atomic cache ------------------------------------------------------------------------------
def _write_weights(folder):
    (folder / "weights.bin").write_bytes(b"123")
    return {"n": 1}


def test_build_atomically_crash_leaves_nothing(tmp_path):
    def crash(folder):
        (folder / "half.bin").write_bytes(b"1")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        B._build_atomically(tmp_path / "m", crash, {"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_build_atomically_builds_once_and_rebuilds_stale(tmp_path):
    calls = []

    def build(folder):
        calls.append(1)
        return _write_weights(folder)

    dest = B._build_atomically(tmp_path / "m", build, {"v": 1})
    assert json.loads((dest / B.CACHE_MARKER).read_text()) == {"v": 1, "n": 1}
    B._build_atomically(tmp_path / "m", build, {"v": 1})
    assert len(calls) == 1                                       # valid cache: not rebuilt
    B._build_atomically(tmp_path / "m", build, {"v": 2})        # package changed: rebuilt
    assert len(calls) == 2 and json.loads((dest / B.CACHE_MARKER).read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_build_atomically_lost_race_uses_winner(tmp_path):
    def racing_build(folder):  # another process finishes first while we build
        B._build_atomically(tmp_path / "m", _write_weights, {"v": 1})
        return _write_weights(folder)

    dest = B._build_atomically(tmp_path / "m", racing_build, {"v": 1})
    assert (dest / "weights.bin").read_bytes() == b"123"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- names that cannot work ------------------------------------------------------------------------
@pytest.mark.parametrize("loader, name, alternative", [
    (B.load_causal_lm, "openai-gpt", "smollm2-135m"),
    (B.load_encoder, "bert-base-uncased", "minilm-l6"),
])
def test_hub_id_offline_fails_with_one_clear_line(loader, name, alternative, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(B.BackboneUnavailable) as err:
        loader(name, cache_dir=tmp_path)  # empty cache: nothing to find locally
    message = str(err.value)
    assert "\n" not in message and repr(name) in message and repr(alternative) in message


def test_hub_unreachable_without_env_flag_fails_fast(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(B, "_hub_offline", lambda: True)
    with pytest.raises(B.BackboneUnavailable, match="'smollm2-135m' instead"):
        B.load_causal_lm("gpt2", cache_dir=tmp_path)


def test_wrong_kind_and_missing_folder():
    with pytest.raises(ValueError, match=r"load_causal_lm\('tiny-gpt2'\)"):
        B.load_encoder("tiny-gpt2")
    with pytest.raises(ValueError, match=r"load_encoder\('minilm-l6'\)"):
        B.load_causal_lm("minilm-l6")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        B.load_causal_lm(os.path.join(".", "no", "such", "model"))


def test_guess_kind():
    assert [B.guess_kind(n) for n in ("tiny-gpt2", "minilm-l6", "bert-base-uncased", "openai-gpt")] == [
        "causal", "encoder", "encoder", "causal"]
