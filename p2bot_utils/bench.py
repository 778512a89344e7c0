"""``python -m p2bot_utils bench PART``: speed benchmarks, measured side by side in ONE run on this device.

Not a test: numbers depend on the machine. Parts: ``transmitter`` (training tokens/s and model FLOP
utilisation against the measured matmul peak; Hits@1 ranking with a shared context vs per-pair scoring;
generation batched vs one reply at a time), ``selfplay`` (self-play dialogues/s, rollout + rewards, batched
with the Receiver's persona cache vs one dialogue at a time). Each part is a function ``argv -> exit code`` in ``PARTS``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable, Sequence

import torch


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
    """Measured FLOP/s of an n×n×n matmul (bf16 on CUDA, fp32 on CPU): the denominator of MFU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = _timed(lambda: a @ b, repeats)
    return 2 * n ** 3 / sec, str(dtype).replace("torch.", "")


def transmitter_train_flops(model, batch: dict) -> float:
    """Model FLOPs of one training step (forward + backward = 3 × forward): 2·N_body per token for the
    non-embedding weights, 2·V·H per LABELLED token for the LM head (computed only there, Eq. 1), and
    4·L·T·H per token for attention scores and values (causal masking not discounted)."""
    cfg = model.lm.config.get_text_config()
    emb = model.lm.get_input_embeddings().weight
    V, H, L = emb.shape[0], emb.shape[1], cfg.num_hidden_layers
    n_body = sum(p.numel() for n, p in model.lm.named_parameters() if p.data_ptr() != emb.data_ptr()
                 and "wpe" not in n)
    tokens = int(batch["attention_mask"].sum())
    labelled = int((batch["labels"] != -100).sum())
    T = batch["input_ids"].shape[1]
    fwd = 2 * n_body * tokens + 2 * V * H * labelled + 4 * L * T * H * tokens
    return 3.0 * fwd


def _bench_training(model, examples, batch_size: int, steps: int) -> dict:
    from p2bot_utils.transmitter_train import TransmitterCollator, TransmitterLoss

    # the paper's layout: one full (context, reply) row for the gold and one for its distractor
    col = dataclasses.replace(TransmitterCollator.for_model(model), shared_context=False)
    loss_fn = TransmitterLoss()
    batch = {k: v.to(model.device) for k, v in col(examples[:batch_size]).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def step():
        out = loss_fn(model, batch, 0.0)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()

    sec = _timed(step, steps)
    model.eval()
    tokens = int(batch["attention_mask"].sum())
    return {"train_tokens_per_s": tokens / sec, "train_model_flops_per_s": transmitter_train_flops(model, batch) / sec,
            "train_sequences": int(batch["input_ids"].shape[0]), "train_seq_len": int(batch["input_ids"].shape[1])}


def _bench_ranking(model, turns: list[dict]) -> dict:
    from p2bot_utils.transmitter_eval import rank_candidates, rank_candidates_per_pair

    P, H, C = ([t[k] for t in turns] for k in ("persona", "history", "candidates"))
    lm_rows = "none" if model.head is not None else "all"
    shared = _timed(lambda: rank_candidates(model, P, H, C, lm_rows=lm_rows))
    pair = _timed(lambda: rank_candidates_per_pair(model, P, H, C, with_lm=model.head is None))
    return {"rank_turns_per_s_shared": len(turns) / shared, "rank_turns_per_s_per_pair": len(turns) / pair,
            "rank_speedup": pair / shared, "rank_candidates": len(C[0])}


def _bench_generation(model, turns: list[dict], max_new_tokens: int) -> dict:
    from p2bot_utils.transmitter import generate_replies

    P, H = [t["persona"] for t in turns], [t["history"] for t in turns]
    kw = dict(num_beams=2, max_new_tokens=max_new_tokens, alpha=0.1)
    batched = _timed(lambda: generate_replies(model, P, H, batch_size=len(P), **kw))
    single = _timed(lambda: [generate_replies(model, [p], [h], batch_size=1, **kw) for p, h in zip(P, H)])
    return {"gen_replies_per_s_batched": len(P) / batched, "gen_replies_per_s_single": len(P) / single,
            "gen_speedup": single / batched}


def transmitter(argv: Sequence[str]) -> int:
    """Benchmark the Transmitter on the shipped sample (or ``--data-dir``) with ``--backbone``."""
    from p2bot_utils.data import load_split_data
    from p2bot_utils.profile import pick_device, set_seed
    from p2bot_utils.transmitter_eval import select_turns
    from p2bot_utils.transmitter_train import build_transmitter, make_examples

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils bench transmitter")
    ap.add_argument("--backbone", default="smollm2-135m", help="tiny-gpt2 | smollm2-135m | hub id | folder")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = the shipped sample")
    ap.add_argument("--max-len", type=int, default=256, help="layout max_len (context + reply tokens)")
    ap.add_argument("--batch-size", type=int, default=4, help="training examples per step (x2 with distractors)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--turns", type=int, default=8, help="turns for ranking and generation")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(list(argv))
    set_seed(0)
    device = pick_device(args.device)
    data = load_split_data(args.data_dir, use_sample=args.data_dir is None)
    model = build_transmitter(args.backbone, "full", args.max_len).to(device).eval()
    peak, dtype = matmul_peak_flops(device)
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
           "backbone": args.backbone, "matmul_peak_tflops": peak / 1e12, "matmul_dtype": dtype}
    res.update(_bench_training(model, make_examples(model.tokenizer, data.train, seed=0), args.batch_size, args.steps))
    res["train_mfu"] = res["train_model_flops_per_s"] / peak
    turns = select_turns(data.dev + data.test, args.turns, seed=0)
    with torch.no_grad():
        res.update(_bench_ranking(model, turns))
        res.update(_bench_generation(model, turns, args.max_new_tokens))
    for k, v in res.items():
        print(f"{k:<30}{v:.4g}" if isinstance(v, float) else f"{k:<30}{v}")
    return 0


# --- selfplay: batched rollouts + rewards vs one dialogue at a time ----------------------------------------
def _selfplay_models(args, device: str):
    """Transmitter, Receiver and R1 LM: saved folders when given, else fresh from the backbones."""
    from p2bot_utils.backbones import load_causal_lm
    from p2bot_utils.receiver import Receiver, ReceiverConfig
    from p2bot_utils.transmitter import Transmitter
    from p2bot_utils.transmitter_train import build_transmitter

    tr = Transmitter.from_pretrained(args.transmitter) if args.transmitter else \
        build_transmitter(args.backbone, "full", args.max_len)
    rec = Receiver.from_pretrained(args.receiver) if args.receiver else \
        Receiver.from_backbone(ReceiverConfig(backbone=args.encoder))
    lm, tok = load_causal_lm(args.lm or args.backbone)
    return tr.to(device).eval(), rec.to(device).eval(), lm.to(device).eval(), tok


def selfplay(argv: Sequence[str]) -> int:
    """Self-play dialogues/s (rollout + every reward term): one batch of ``--dialogues`` with the Receiver's
    persona cache, against the same dialogues played one at a time with the cache cleared."""
    from p2bot_utils import selfplay as sp
    from p2bot_utils.data import load_split_data
    from p2bot_utils.profile import pick_device, set_seed

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils bench selfplay")
    ap.add_argument("--backbone", default="smollm2-135m", help="Transmitter backbone when no --transmitter")
    ap.add_argument("--encoder", default="minilm-l6", help="Receiver backbone when no --receiver")
    ap.add_argument("--transmitter", default="", help="saved Transmitter folder (default: a fresh one)")
    ap.add_argument("--receiver", default="", help="saved Receiver folder (default: a fresh one)")
    ap.add_argument("--lm", default="", help="R1 LM (default: --backbone)")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = the shipped sample")
    ap.add_argument("--dialogues", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(list(argv))
    set_seed(0)
    device = pick_device(args.device)
    data = load_split_data(args.data_dir, use_sample=args.data_dir is None, download=False)
    tr, rec, lm, tok = _selfplay_models(args, device)
    cfg = sp.SelfPlayConfig(n_dialogues=args.dialogues, batch_size=args.dialogues, n_turns=args.turns,
                            max_new_tokens=args.max_new_tokens)
    judges = sp.RewardModels(lm, tok, tr, rec).frozen()
    pa, pb, op = sp.step_inputs(data.persona_pool, sp.opening_utterances(data.train), cfg, 0)

    def play(lo: int, hi: int):
        sp.compute_rewards(sp.rollout(tr, tr, pa[lo:hi], pb[lo:hi], op[lo:hi], cfg), judges, cfg)

    def one_at_a_time():
        for i in range(len(op)):
            rec.clear_cache()
            play(i, i + 1)

    batched, single = _timed(lambda: play(0, len(op))), _timed(one_at_a_time)
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
           "backbone": args.transmitter or args.backbone, "dialogues": len(op), "turns": args.turns,
           "max_new_tokens": args.max_new_tokens, "selfplay_dialogues_per_s_batched": len(op) / batched,
           "selfplay_dialogues_per_s_single": len(op) / single, "selfplay_speedup": single / batched}
    for k, v in res.items():
        print(f"{k:<34}{v:.4g}" if isinstance(v, float) else f"{k:<34}{v}")
    return 0


PARTS: dict[str, Callable[[Sequence[str]], int]] = {"transmitter": transmitter, "selfplay": selfplay}


def main(argv: Sequence[str]) -> int:
    """Dispatch ``bench PART [ARGS]`` to ``PARTS[PART]``."""
    argv = list(argv)
    if not argv or argv[0] not in PARTS:
        import sys

        print(f"usage: python -m p2bot_utils bench {{{'|'.join(PARTS)}}} [ARGS]", file=sys.stderr)
        return 2
    return PARTS[argv[0]](argv[1:])
