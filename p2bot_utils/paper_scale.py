"""The `paper` profile at full scale: its workload per notebook, the FLOPs of it, and the wall time it needs.

Two ways to the same table (README "The paper profile on a GPU"):

- ``flops``: FLOPs counted from token lengths measured on the data (the GPT-1-style BPE of ``paper_backbones``
  and BERT's WordPiece) and the architectures' sizes, turned into hours at a STATED MFU on a stated peak
  (default one H100 SXM, 989 TFLOP/s dense bf16). Runs on a CPU: ``python -m p2bot_utils.paper_scale flops``.
- ``gpu``: the GPU check (``scripts/gpu_check.sh``): the paper architectures in bf16 on this CUDA device, timed
  with ``bench`` (training tokens/s and MFU against a measured bf16 matmul peak, Hits@1 ranking turns/s,
  generation replies/s, self-play dialogues/s, a Receiver step), and each notebook's wall time projected from
  those rates. Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.

Model FLOPs per token of a forward pass: 2·N (non-embedding weights) + 2·V·H where logits are computed
+ 4·L·T·H (attention over T positions); training = 3 × forward. Counts of the paper's data: ConvAI2 train
17,878 dialogues / 131,438 turn pairs, validation 1,000 / 7,801 (Dinan et al., 2019).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from p2bot_utils import bench
from p2bot_utils.backbones import load_causal_lm, load_encoder
from p2bot_utils.data import load_split_data
from p2bot_utils.profile import atomic_write_json, atomic_write_text, load_params
from p2bot_utils.receiver import Receiver, ReceiverConfig, collate_examples, receiver_loss
from p2bot_utils.sides import build_examples, load_sides, pool_from_sides

TRAIN_DIALOGUES, TRAIN_PAIRS, VALID_PAIRS = 17_878, 131_438, 7_801
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of one H100 SXM
GPT1_VOCAB = 40_478  # openai-gpt's BPE vocabulary (the LM head's rows); the local BPE has 16,000
NB01_SYSTEMS, NB04_SYSTEMS, VARIANTS = 4, 7, 3  # untrained + 3 variants; Table 1/3 systems; self-play variants


def _gpt_sizes(model) -> dict:
    cfg = model.config
    V, H, L = model.get_input_embeddings().weight.shape[0], cfg.n_embd, cfg.n_layer
    return {"N": 12 * L * H * H, "V": max(V, GPT1_VOCAB), "H": H, "L": L}  # the real vocabulary, not the local BPE


def _fwd(s: dict, tokens: float, logits: float, span: float) -> float:
    """Forward FLOPs of ``tokens`` tokens attending over ``span`` positions, with ``logits`` LM-head rows."""
    return 2 * s["N"] * tokens + 2 * s["V"] * s["H"] * logits + 4 * s["L"] * span * s["H"] * tokens


def token_stats(data_dir=None, max_len: int = 512, n_turns: int = 2000) -> dict:
    """Mean context / persona / reply tokens (GPT-1-style BPE) and Receiver side sizes (WordPiece) on the data."""
    gpt, tok = load_causal_lm("openai-gpt")
    bert_tok = load_encoder("bert-base-uncased")[1]
    split = load_split_data(data_dir, use_sample=data_dir is None, download=False, mode="revised")
    n = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    turns = [t for e in split.train + split.dev + split.test for t in e.turns][:n_turns]
    eps = {id(e): e for e in split.train + split.dev + split.test}
    persona = statistics.mean(sum(map(n, e.own_persona)) + len(e.own_persona) for e in eps.values())
    hist, reply, ctx = [], [], []
    for e in eps.values():
        so_far = 0
        for t in e.turns:
            so_far += n(t.partner) + 1
            hist.append(so_far)
            reply.append(n(t.reply) + 1)
            so_far += reply[-1]
    ctx = [min(persona + h, max_len - 32) for h in hist]
    sides = load_sides(data_dir, "revised", use_sample=data_dir is None)
    all_sides = sides.train + sides.dev + sides.test
    wp = lambda text: len(bert_tok.encode(text)) # noqa: E731
    return {"sizes": _gpt_sizes(gpt), "bert_N": 12 * 12 * 768 * 768, "context": statistics.mean(ctx),
            "persona": persona, "reply": statistics.mean(reply), "turns_measured": len(turns),
            "side_utterances": statistics.mean(len(s.utterances) for s in all_sides),
            "utterance_wp": statistics.mean(wp(u) for s in all_sides for u in s.utterances),
            "persona_sentences": statistics.mean(len(s.persona) for s in all_sides),
            "sentence_wp": statistics.mean(wp(x) for s in all_sides for x in s.persona)}


def notebook_flops(st: dict, p: dict) -> dict[str, dict[str, float]]:
    """FLOPs per notebook of the paper profile at full scale, split into compute-bound (training, ranking,
    encoders) and decode (token-by-token generation) parts."""
    s, C, R, P = st["sizes"], st["context"], st["reply"], st["persona"]
    ep, k, beams, T = p["transmitter_num_epochs"], 20, p["transmitter_num_beams"], p["transmitter_max_new_tokens"]
    train_full = 3 * _fwd(s, 2 * (C + R), R, C + R)  # gold + one distractor row; LM loss on the gold
    train_np = 3 * _fwd(s, 2 * (C - P + R), R, C - P + R)  # −Persona
    train_nn = 3 * _fwd(s, C + R, R, C + R)  # −Next: no distractor row
    rank = _fwd(s, C + k * R, R, C)  # shared context + 20 candidates; LM rows of the gold (ppl)
    gen = beams * (_fwd(s, C, 0, C) + _fwd(s, T, T, C + T / 2))  # prefill + T decode steps per beam
    dev = VALID_PAIRS / 2
    bert_tok = st["side_utterances"] * st["utterance_wp"] + 2 * st["persona_sentences"] * st["sentence_wp"]
    receiver = 3 * 2 * st["bert_N"] * bert_tok  # two BERT encoders, forward + backward
    sides = TRAIN_DIALOGUES * 2 * len(p["receiver_train_modes"])
    sp_turns, sp_new = p["selfplay_n_turns"], p["selfplay_max_new_tokens"]
    dialogue_decode = sp_turns * _fwd(s, sp_new, sp_new, C + sp_new) + (sp_turns - 1) * gen  # B samples, A beams
    dialogue_score = (sp_turns * (2 * _fwd(s, C + R, 1, C) + _fwd(s, R, R, R))  # R2 head, REINFORCE fwd, R1 LM
                      + 2 * sp_turns * 2 * st["bert_N"] * st["utterance_wp"])  # R3: the Receiver on 2N utterances
    dialogue_grad = sp_turns * 2 * _fwd(s, C + R, sp_new, C)  # backward of B's log-probabilities
    n_sp, n_eval = VARIANTS * p["selfplay_n_dialogues"], (VARIANTS + 1) * p["selfplay_eval_dialogues"]
    probe = 2 * st["bert_N"] * (VALID_PAIRS / 7.8 * 2) * bert_tok * 2  # every side + its candidates, cached
    return {
        "01_transmitter_mle": {"compute": ep * TRAIN_PAIRS * (train_full + train_np + train_nn)
                               + NB01_SYSTEMS * dev * rank, "decode": NB01_SYSTEMS * dev * gen},
        "02_receiver": {"compute": p["receiver_num_epochs"] * sides * receiver, "decode": 0.0},
        "03_selfplay_rl": {"compute": n_sp * (dialogue_score + dialogue_grad) + n_eval * dialogue_score,
                           "decode": (n_sp + n_eval) * dialogue_decode},
        "04_automatic_eval": {"compute": 2 * NB04_SYSTEMS * VALID_PAIRS * rank,
                              "decode": 2 * NB04_SYSTEMS * VALID_PAIRS * gen},
        "05_persona_probing": {"compute": probe, "decode": 0.0},
    }


def flop_table(st: dict, params: dict, mfu: float, decode_mfu: float, peak: float = H100_BF16_PEAK) -> str:
    """Markdown: FLOPs and projected hours per notebook at the stated MFUs (compute-bound / decoding)."""
    rows = ["| notebook | compute FLOPs | decode FLOPs | hours at the stated MFU |", "|---|---|---|---|"]
    total = 0.0
    for nb, f in notebook_flops(st, params).items():
        h = (f["compute"] / (mfu * peak) + f["decode"] / (decode_mfu * peak)) / 3600
        total += h
        rows.append(f"| {nb} | {f['compute']:.2e} | {f['decode']:.2e} | {h:.2f} |")
    rows.append(f"| **all** | | | **{total:.1f}** |")
    return "\n".join(rows) + "\n"


def _receiver_step_s(device: str, batch: int, data_dir) -> float:
    sides = load_sides(data_dir, "revised", use_sample=data_dir is None)
    rec = Receiver.from_backbone(ReceiverConfig(backbone="bert-base-uncased")).to(device).train()
    ex = build_examples(sides.train, pool_from_sides(sides.train), "persona", 0)[:batch]
    b = collate_examples(ex, rec.tokenizer, 64)
    opt = torch.optim.AdamW(rec.parameters(), lr=1e-6)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = receiver_loss(rec(b), rec.config, 0.5)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()

    return bench._timed(step, 3)


GPU_SIZES = dict(batch_size=16, steps=5, turns=32, max_new_tokens=32, dialogues=12, receiver_batch=32)
SMALL_SIZES = dict(batch_size=2, steps=1, turns=2, max_new_tokens=4, dialogues=2, receiver_batch=2)  # CPU path check


def gpu_check(out: Path, data_dir=None, budget_s: float = 420.0, small: bool = False) -> dict:
    """The paper architectures in bf16 on this device: rates, then every notebook's projected wall time.
    ``small``: tiny amounts, to check the path on a CPU (its rates mean nothing)."""
    t0, device = time.time(), "cuda" if torch.cuda.is_available() else "cpu"
    params, z = load_params("paper"), SMALL_SIZES if small else GPU_SIZES
    res: dict = {"device": bench._device_name(device), "params": "configs/paper.yaml", "sizes": z}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        res["transmitter"] = bench.transmitter("openai-gpt", data_dir, max_len=512, batch_size=z["batch_size"],
                                               steps=z["steps"], turns=z["turns"], max_new_tokens=z["max_new_tokens"],
                                               device=device)
        if time.time() - t0 < budget_s / 2:
            res["selfplay"] = bench.selfplay("openai-gpt", "bert-base-uncased", lm="openai-gpt", data_dir=data_dir,
                                             dialogues=z["dialogues"], turns=3, max_new_tokens=z["max_new_tokens"],
                                             max_len=512, device=device)
    res["receiver_step_s"] = _receiver_step_s(device, z["receiver_batch"], data_dir)
    tr, sp = res["transmitter"], res.get("selfplay", {})
    peak = tr["matmul_peak_tflops"] * 1e12
    res["train_examples_per_s"] = tr["train_examples_per_s"]
    ep, dev = params["transmitter_num_epochs"], VALID_PAIRS / 2
    train_s = ep * TRAIN_PAIRS / tr["train_examples_per_s"] * 2.5  # full + −Persona + −Next (half the rows)
    per_turn = 1 / tr["rank_turns_per_s_shared"] + 1 / tr["gen_replies_per_s_batched"]
    dlg_s = 1 / sp["selfplay_dialogues_per_s_batched"] * 1.5 if sp else float("nan")  # + REINFORCE backward
    res["projected_hours"] = {
        "01_transmitter_mle": (train_s + NB01_SYSTEMS * dev * per_turn) / 3600,
        "02_receiver": params["receiver_num_epochs"] * TRAIN_DIALOGUES * 4 / z["receiver_batch"]
        * res["receiver_step_s"] / 3600,
        "03_selfplay_rl": (VARIANTS * params["selfplay_n_dialogues"] + 4 * params["selfplay_eval_dialogues"])
        * dlg_s / 3600,
        "04_automatic_eval": 2 * NB04_SYSTEMS * VALID_PAIRS * per_turn / 3600,
    }
    res["mfu_train"], res["peak_tflops_measured"], res["wall_s"] = tr["train_mfu"], peak / 1e12, time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_check.json", res)
    lines = [f"# GPU check: {res['device']}", "", f"bf16 matmul peak {peak / 1e12:.0f} TFLOP/s (measured); "
             f"training MFU {100 * tr['train_mfu']:.1f}%, {tr['train_tokens_per_s']:.0f} tokens/s; ranking "
             f"{tr['rank_turns_per_s_shared']:.1f} turns/s; generation {tr['gen_replies_per_s_batched']:.1f} "
             f"replies/s; self-play {sp.get('selfplay_dialogues_per_s_batched', float('nan')):.2f} dialogues/s; "
             f"Receiver step {res['receiver_step_s']:.3f} s", "", "| notebook | projected hours |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["projected_hours"].items()]
    atomic_write_text(out / "gpu_check.md", "\n".join(lines) + "\n")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m p2bot_utils.paper_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("flops", "gpu"))
    ap.add_argument("--data-dir", default=None, help="ConvAI2 folder (default: the shipped sample)")
    ap.add_argument("--out", default="results/paper-gpu-check")
    ap.add_argument("--mfu", type=float, default=0.4, help="MFU of training / ranking / encoders (flops)")
    ap.add_argument("--decode-mfu", type=float, default=0.02, help="MFU of token-by-token decoding (flops)")
    ap.add_argument("--small", action="store_true", help="gpu: tiny amounts, to check the path on a CPU")
    args = ap.parse_args(argv)
    if args.what == "gpu":
        print(json.dumps(gpu_check(Path(args.out), args.data_dir, small=args.small), indent=2, default=float))
        return 0
    st = token_stats(args.data_dir)
    print(json.dumps({k: v for k, v in st.items()}, default=float))
    print(flop_table(st, load_params("paper"), args.mfu, args.decode_mfu))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
