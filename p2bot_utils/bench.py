"""``python -m p2bot_utils bench PART``: speed benchmarks, measured side by side in ONE run on this device.

Not a test: numbers depend on the machine. Parts: ``transmitter`` (training tokens/s and model FLOP
utilisation against the measured matmul peak; Hits@1 ranking with a shared context vs per-pair scoring;
generation batched vs one reply at a time), ``selfplay`` (self-play dialogues/s, rollout + rewards, batched
with the Receiver's persona cache vs one dialogue at a time), ``linear`` (a linear layer's product with the
weight transposed, as ``F.linear`` runs it, against a contiguous transposed copy, for 1 to 512 rows: where
``cpu_linear.RowsLinear`` pays), ``alloc`` (one demo training step before and after
``cpu_memory.keep_freed_memory``: page faults, system and wall seconds per step). Each part is a function returning a dict;
``cli`` parses the arguments and prints it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from p2bot_utils import cpu_memory, selfplay as sp
from p2bot_utils.backbones import load_causal_lm
from p2bot_utils.data import load_split_data
from p2bot_utils.decoding import context_lengths, generate_replies
from p2bot_utils.profile import pick_device, set_seed
from p2bot_utils.receiver import Receiver, ReceiverConfig
from p2bot_utils.rewards import RewardModels, compute_rewards
from p2bot_utils.training import adam_impl
from p2bot_utils.transmitter import Transmitter
from p2bot_utils.transmitter_eval import rank_candidates, rank_candidates_per_pair, select_turns
from p2bot_utils.transmitter_train import TransmitterCollator, TransmitterLoss, build_transmitter, make_examples


def _timed(fn: Callable, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def matmul_peak_flops(device: str, n: int = 2048, repeats: int = 5) -> tuple[float, str]:
    """Measured FLOP/s of an n×n×n matmul (bf16 on CUDA, fp32 on CPU): the denominator of MFU. The FASTEST of
    ``repeats`` timings (a peak; the mean of a few moved by 30 % between runs on a 2-core CPU)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / sec, str(dtype).replace("torch.", "")


def forward_flops(model, tokens: int, lm_tokens: int) -> float:
    """Model FLOPs of a forward pass over ``tokens`` tokens, ``lm_tokens`` of them through the LM head:
    2·N_body per token for the non-embedding weights, 2·V·H per LM-head token (attention scores not counted)."""
    emb = model.lm.get_input_embeddings().weight
    n_body = sum(p.numel() for n, p in model.lm.named_parameters() if p.data_ptr() != emb.data_ptr()
                 and "wpe" not in n)
    return 2.0 * n_body * tokens + 2.0 * emb.shape[0] * emb.shape[1] * lm_tokens


def transmitter_train_flops(model, batch: dict) -> float:
    """Model FLOPs of one training step on full rows (forward + backward = 3 × forward): ``forward_flops``
    with the LM head on the LABELLED tokens only (computed only there, Eq. 1), plus 4·L·T·H per token for
    attention scores and values (causal masking not discounted)."""
    H, L = model.lm.get_input_embeddings().weight.shape[1], model.lm.config.get_text_config().num_hidden_layers
    tokens = int(batch["attention_mask"].sum())
    attention = 4 * L * batch["input_ids"].shape[1] * H * tokens
    return 3.0 * (forward_flops(model, tokens, int((batch["labels"] != -100).sum())) + attention)


def _bench_training(model, examples, batch_size: int, steps: int) -> dict:
    # the paper's layout: one full (context, reply) row for the gold and one for its distractor
    col = dataclasses.replace(TransmitterCollator.for_model(model), shared_context=False)
    loss_fn = TransmitterLoss()
    batch = {k: v.to(model.device) for k, v in col(examples[:batch_size]).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, **adam_impl(model.parameters()))  # as training runs it
    model.train()

    def step():
        out = loss_fn(model, batch, 0.0)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()

    sec = _timed(step, steps)
    model.eval()
    tokens = int(batch["attention_mask"].sum())
    return {"train_tokens_per_s": tokens / sec, "train_examples_per_s": batch_size / sec, "train_model_flops_per_s": transmitter_train_flops(model, batch) / sec,
            "train_sequences": int(batch["input_ids"].shape[0]), "train_seq_len": int(batch["input_ids"].shape[1])}


def _demo_training_step(model, examples, batch_size: int) -> tuple[Callable[[], None], dict]:
    """One optimizer step of the demo's training (``batch_size`` contexts, each with its gold + distractors
    packed into one row, softmax NUP loss, AdamW as training runs it) as a function, and its batch."""
    col = TransmitterCollator.for_model(model)
    loss_fn = TransmitterLoss(nup_loss="softmax")
    batch = {k: v.to(model.device) if hasattr(v, "to") else {kk: vv.to(model.device) for kk, vv in v.items()}
             for k, v in col(examples[:batch_size]).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, **adam_impl(model.parameters()))  # as training runs it
    model.train()

    def step():
        loss_fn(model, batch, 0.0)["loss"].backward()
        opt.step()
        opt.zero_grad()

    return step, batch


def _bench_training_shared(model, examples, batch_size: int, steps: int) -> dict:
    """The demo's layout: each context once, its gold + 7 distractors packed into one row (``packing``).
    FLOPs counted: 3 × forward over the real tokens (context + every reply), the LM head on the gold only."""
    step, batch = _demo_training_step(model, examples, batch_size)
    sec = _timed(step, steps)
    model.eval()
    c = batch["candidates"]
    tokens = int(batch["attention_mask"].sum()) + int(c["attention_mask"].sum())
    flops = 3.0 * forward_flops(model, tokens, int((c["labels"] != -100).sum()))
    return {"train_shared_examples_per_s": batch_size / sec, "train_shared_replies_per_context": c["input_ids"].shape[0] // batch_size,
            "train_shared_model_flops_per_s": flops / sec}


def _bench_ranking(model, turns: list[dict], batch_size: int) -> dict:
    """Hits@1 ranking as notebook 04 runs it (context once + one packed row of candidates, the gold's LM
    log-likelihood for perplexity) against one full forward per (context, candidate) pair."""
    P, H, C = ([t[k] for t in turns] for k in ("persona", "history", "candidates"))
    lm_rows = "gold" if model.head is not None else "all"

    def shared_fn():
        for lo in range(0, len(P), batch_size):
            rank_candidates(model, P[lo:lo + batch_size], H[lo:lo + batch_size], C[lo:lo + batch_size], lm_rows=lm_rows)

    shared = _timed(shared_fn)
    pair = _timed(lambda: rank_candidates_per_pair(model, P, H, C, with_lm=True))
    ctx = sum(context_lengths(model, P, H))
    cand = [len(model.tokenizer.encode(c, add_special_tokens=False)[:model.config.max_reply_tokens]) + 1
            for cs in C for c in cs]
    gold = sum(len(model.tokenizer.encode(cs[-1], add_special_tokens=False)) + 1 for cs in C)
    flops = forward_flops(model, ctx + sum(cand), gold)  # the work ranking needs, no padding
    return {"rank_turns_per_s_shared": len(turns) / shared, "rank_turns_per_s_per_pair": len(turns) / pair,
            "rank_speedup": pair / shared, "rank_candidates": len(C[0]), "rank_gflop_per_turn": flops / len(P) / 1e9,
            "rank_model_flops_per_s": flops / shared}


def _bench_generation(model, turns: list[dict], max_new_tokens: int) -> dict:
    """Beam search (2 beams) + Eq. 3 re-scoring of both beams as notebooks 01 / 04 run it: all turns in one
    batch against one reply at a time. FLOPs counted are the work the replies need (each context once,
    every beam token once to generate and once to re-score), not the padding either way computes."""
    P, H = [t["persona"] for t in turns], [t["history"] for t in turns]
    kw = dict(num_beams=2, max_new_tokens=max_new_tokens, alpha=0.1)
    outs = generate_replies(model, P, H, batch_size=len(P), return_beams=True, **kw)
    batched = _timed(lambda: generate_replies(model, P, H, batch_size=len(P), **kw))
    single = _timed(lambda: [generate_replies(model, [p], [h], batch_size=1, **kw) for p, h in zip(P, H)])
    beam_tokens = sum(len(model.tokenizer.encode(b, add_special_tokens=False)) + 1 for o in outs for b in o["beams"])
    flops = forward_flops(model, sum(context_lengths(model, P, H)) + 2 * beam_tokens, 2 * beam_tokens)
    return {"gen_replies_per_s_batched": len(P) / batched, "gen_replies_per_s_single": len(P) / single,
            "gen_speedup": single / batched, "gen_gflop_per_reply": flops / len(P) / 1e9,
            "gen_model_flops_per_s_batched": flops / batched, "gen_model_flops_per_s_single": flops / single}


def transmitter(backbone: str = "smollm2-135m", data_dir: str | None = None, max_len: int = 128, batch_size: int = 4,
                steps: int = 3, turns: int = 16, max_new_tokens: int = 32, rank_batch_size: int = 8,
                device: str = "auto") -> dict:
    """Benchmark the Transmitter with ``backbone`` at the demo's settings (layout 128 tokens, 2 beams, replies
    up to 32 tokens, ranking 8 turns per batch) on the data every command finds (``data_dir``, else
    P2BOT_DATA_DIR or ./data, else the shipped sample; ``data_source`` says which) -> a dict of results."""
    set_seed(0)
    device = pick_device(device)
    data = load_split_data(data_dir, download=False)
    model = build_transmitter(backbone, "full", max_len).to(device).eval()
    first, dtype = matmul_peak_flops(device)
    res = {"device": _device_name(device), "backbone": backbone, "data_source": data.source}
    res.update(_bench_training(model, make_examples(model.tokenizer, data.train, seed=0), batch_size, steps))
    res.update(_bench_training_shared(model, make_examples(model.tokenizer, data.train, seed=0, n_distractors=7),
                                      batch_size, steps))
    sample = select_turns(data.dev + data.test, turns, seed=0)
    with torch.no_grad():
        res.update(_bench_ranking(model, sample, rank_batch_size))
        res.update(_bench_generation(model, sample, max_new_tokens))
    # the peak is measured before AND after the work and the higher taken: a 2-core CPU measured once at
    # start-up once read 0.077 TFLOP/s against 0.13 a minute later, which inflated every MFU by 1.7x
    peak = max(first, matmul_peak_flops(device)[0])
    res.update({"matmul_peak_tflops": peak / 1e12, "matmul_peak_tflops_first": first / 1e12, "matmul_dtype": dtype})
    for name, key in (("train_mfu", "train_model_flops_per_s"), ("train_shared_mfu", "train_shared_model_flops_per_s"),
                      ("rank_fraction_of_peak", "rank_model_flops_per_s"),
                      ("gen_fraction_of_peak_batched", "gen_model_flops_per_s_batched"),
                      ("gen_fraction_of_peak_single", "gen_model_flops_per_s_single")):
        res[name] = res[key] / peak
    return res


def linear(in_features: int = 576, out_features: int = 1536, rows: str = "1,2,4,8,16,32,64,128,512",
           repeats: int = 20, device: str = "auto") -> dict:
    """GFLOP/s of ``F.linear(x, W)`` (W stored (out, in): the product with W transposed) and of ``x @ W_t``
    (W_t = W.t().contiguous(), what ``cpu_linear.RowsLinear`` keeps) for each row count of x, no gradient.
    The defaults are SmolLM2-135M's MLP up-projection (576 -> 1536). Median of ``repeats`` calls."""
    device = pick_device(device)
    set_seed(0)
    w = torch.randn(out_features, in_features, device=device)
    w_t = w.t().contiguous()
    res = {"device": _device_name(device), "shape": f"{in_features} -> {out_features}"}
    for m in (int(r) for r in rows.split(",")):
        x = torch.randn(m, in_features, device=device)
        with torch.no_grad():
            t_lin = sorted(_timed(lambda: torch.nn.functional.linear(x, w)) for _ in range(repeats))[repeats // 2]
            t_copy = sorted(_timed(lambda: x @ w_t) for _ in range(repeats))[repeats // 2]
        flops = 2.0 * m * in_features * out_features
        res[f"rows_{m}_gflops_linear"] = flops / t_lin / 1e9
        res[f"rows_{m}_gflops_copy"] = flops / t_copy / 1e9
        res[f"rows_{m}_copy_speedup"] = t_lin / t_copy
    return res


def alloc(backbone: str = "smollm2-135m", data_dir: str | None = None, max_len: int = 128, batch_size: int = 4,
          steps: int = 4) -> dict:
    """The demo's training step (``batch_size`` contexts, gold + 7 distractors packed, AdamW as training
    runs it) on a CPU, ``steps`` times with glibc's default malloc settings and ``steps`` times after
    ``cpu_memory.keep_freed_memory()``: medians of page faults, system CPU seconds and wall seconds per step.
    Run it in a fresh process (anything that called ``pick_device("cpu")`` before has applied the settings)."""
    import resource

    if cpu_memory.is_applied():
        raise RuntimeError("bench alloc: the malloc settings are already in force in this process; run it alone")
    set_seed(0)
    data = load_split_data(data_dir, download=False)
    model = build_transmitter(backbone, "full", max_len)
    step, _ = _demo_training_step(model, make_examples(model.tokenizer, data.train, seed=0, n_distractors=7),
                                  batch_size)

    def measured() -> list[float]:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return [r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime, time.perf_counter() - t0]

    def medians() -> list[float]:
        for _ in range(3):  # warm-up; after the switch the heap takes a few steps to grow to the step's peak
            measured()
        rows = [measured() for _ in range(steps)]
        return [sorted(col)[len(col) // 2] for col in zip(*rows)]

    before = medians()
    applied = cpu_memory.keep_freed_memory()
    after = medians()
    res = {"device": _device_name("cpu"), "backbone": backbone, "data_source": data.source, "applied": applied}
    for name, b, a in zip(("page_faults", "sys_seconds", "wall_seconds"), before, after):
        res[f"{name}_per_step_default"], res[f"{name}_per_step_kept"] = float(b), float(a)
    return res


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


# --- selfplay: batched rollouts + rewards vs one dialogue at a time ----------------------------------------
def _selfplay_models(transmitter_dir: str, receiver_dir: str, backbone: str, encoder: str, lm: str, max_len: int,
                    device: str):
    """Transmitter, Receiver and R1 LM: saved folders when given, else fresh from the backbones."""
    tr = Transmitter.from_pretrained(transmitter_dir) if transmitter_dir else build_transmitter(backbone, "full", max_len)
    rec = Receiver.from_pretrained(receiver_dir) if receiver_dir else Receiver.from_backbone(ReceiverConfig(backbone=encoder))
    r1, tok = load_causal_lm(lm or backbone)
    return tr.to(device).eval(), rec.to(device).eval(), r1.to(device).eval(), tok


def selfplay(backbone: str = "smollm2-135m", encoder: str = "minilm-l6", transmitter_dir: str = "",
             receiver_dir: str = "", lm: str = "", data_dir: str | None = None, dialogues: int = 8, turns: int = 3,
             max_new_tokens: int = 16, max_len: int = 128, device: str = "auto") -> dict:
    """Self-play dialogues/s (rollout + every reward term): one batch of ``dialogues`` with the Receiver's
    persona cache, against the same dialogues played one at a time with the cache cleared."""
    set_seed(0)
    device = pick_device(device)
    data = load_split_data(data_dir, download=False)
    tr, rec, r1, tok = _selfplay_models(transmitter_dir, receiver_dir, backbone, encoder, lm, max_len, device)
    cfg = sp.SelfPlayConfig(n_dialogues=dialogues, batch_size=dialogues, n_turns=turns, max_new_tokens=max_new_tokens)
    judges = RewardModels(r1, tok, tr, rec).frozen()
    pa, pb, op = sp.step_inputs(data.persona_pool, sp.opening_utterances(data.train), cfg, 0)

    def play(lo: int, hi: int):
        compute_rewards(sp.rollout(tr, tr, pa[lo:hi], pb[lo:hi], op[lo:hi], cfg), judges, cfg)

    def one_at_a_time():
        for i in range(len(op)):
            rec.clear_cache()
            play(i, i + 1)

    batched, single = _timed(lambda: play(0, len(op))), _timed(one_at_a_time)
    return {"device": _device_name(device), "backbone": transmitter_dir or backbone, "dialogues": len(op),
            "turns": turns, "max_new_tokens": max_new_tokens, "selfplay_dialogues_per_s_batched": len(op) / batched,
            "selfplay_dialogues_per_s_single": len(op) / single, "selfplay_speedup": single / batched}
