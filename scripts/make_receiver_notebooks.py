"""Writes notebooks/02_receiver.ipynb and notebooks/05_persona_probing.ipynb (no outputs) with nbformat.

Run from the project root: ``.venv/bin/python scripts/make_receiver_notebooks.py``.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                             "name": "python3"},
                                             "language_info": {"name": "python"}})
    for c in nb.cells:  # stable, diff-friendly ids
        c.id = f"{name[:2]}-{nb.cells.index(c):02d}"
    nbformat.validate(nb)
    (ROOT / "notebooks" / name).write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    print("wrote", ROOT / "notebooks" / name)


# ------------------------------------------------------------------------------------------------------------
RECEIVER = [
    md(r"""
# 02 · The Receiver: mutual persona perception (paper Sec. 4)

P²Bot's **Receiver** answers one question: *given what a speaker said, how well does it reveal the speaker's
persona?* Its score becomes the mutual-persona-perception reward $R_3$ of self-play (notebook 04). It is trained
on its own, before self-play, with a margin loss that ranks a speaker's **true persona** above a **distractor**.

This notebook builds the two encoders, walks through Eq. 11–15 on one real dialogue side, trains the Receiver,
plots its training curves and saves it to `runs/<profile>/receiver/` for self-play and for the probing study
(notebook 05).
"""),
    code('''
# Parameters (papermill overrides them from configs/<profile>.yaml; the defaults are the smoke profile)
profile = "smoke"
seed = 0
data_dir = ""                      # empty: P2BOT_DATA_DIR, then ./data (demo/paper)
use_sample = True                  # smoke always runs on the shipped synthetic sample
split_fractions = [0.8, 0.1, 0.1]
device = "auto"
receiver_backbone = "tiny-bert"    # demo: minilm-l6; paper: bert-base-uncased
receiver_dir = ""                  # empty: runs/<profile>/receiver
receiver_train_modes = ["original", "revised"]  # the persona files whose training sides are mixed
receiver_released_code = False     # True: the released code's choices (shared encoder, sum, max, m 0.5, beta 1e-2)
receiver_distractor = "persona"    # persona: another group's real persona; combination: the released code's
receiver_hard_k = 1                # 1: a uniform draw (paper); k: the most word-overlapping of k draws (budget option)
receiver_max_length = 24           # tokens per utterance / persona sentence
receiver_train_layers = -1         # top transformer blocks fine-tuned (-1: all, the paper; else embeddings frozen)
receiver_margin = 0.4              # Eq. 12 m
receiver_l1_beta = 0.0001          # Eq. 12 beta
receiver_tau_start = 10.0          # Eq. 13 tau, annealed linearly ...
receiver_tau_end = 0.5             # ... to this
receiver_lr = 0.0001
receiver_num_epochs = 1
receiver_max_steps = 6             # -1: num_epochs worth of steps
receiver_batch_size = 4
receiver_grad_accum = 1
receiver_warmup_steps = 0
receiver_weight_decay = 0.01
receiver_save_every = 50
receiver_log_every = 1
''', tags=("parameters",)),
    code('''
import dataclasses
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from p2bot_utils import probing, profile as prof, receiver as rc
from p2bot_utils.training import TrainConfig

t0 = time.time()
prof.set_seed(seed)
params = {k: v for k, v in globals().items() if k in {"profile", "seed", "data_dir", "use_sample", "split_fractions",
                                                        "device"} or k.startswith("receiver_")}
device = prof.pick_device(device)
print(f"profile={profile} device={device}")
'''),
    md(r"""
## 1. Dialogue sides

The Receiver sees **one speaker at a time**: all utterances $x = (x_1, \dots, x_n)$ one speaker said in one
dialogue, and that speaker's persona $w = (w_1, \dots, w_m)$. The `both` files give both speakers of every episode
(the own speaker's replies with `your persona`, the partner's utterances with `partner's persona`, without the
`__SILENCE__` placeholder), so each dialogue yields two *sides*.

Sides are split by **persona group** (notebook 00's split, extended to partner sides): a group whose persona a test
speaker has is held out entirely, so the probing study of notebook 05 never sees a test persona in training.
"""),
    code('''
splits = {m: probing.load_sides(data_dir or None, m, seed, split_fractions, use_sample=use_sample)
          for m in receiver_train_modes}
source = next(iter(splits.values())).source
results_dir, figures_dir = prof.output_dirs(profile, source)
out_dir = Path(receiver_dir) if receiver_dir else prof.runs_dir(profile, source) / "receiver"
if source == "sample":
    print("#" * 100)
    print("#  USING THE SHIPPED SYNTHETIC SAMPLE, NOT PERSONA-CHAT: numbers below say nothing about the paper.")
    print(f"#  Outputs go to {results_dir}")
    print("#" * 100)
for m, sp in splits.items():
    print(m, sp.info["split_method"], "sides:", sp.info["sides"], "persona groups:", sp.info["groups"])
side = splits[receiver_train_modes[0]].train[0]
print("\\none side:", side.side, "speaker of", side.episode_id)
print("persona:", *side.persona, sep="\\n  ")
print("utterances:", *side.utterances[:4], "...", sep="\\n  ")
'''),
    md(r"""
## 2. Two encoders and the relevance matrix (Eq. 11)

An **impression encoder** embeds each utterance and a **persona encoder** each persona sentence. Both are
pretrained BERT-style encoders (paper: `bert-base-uncased`; demo: all-MiniLM-L6-v2; smoke: a tiny random BERT),
and a sentence vector is the **mean of the last hidden states over its real tokens** (padding excluded). Stacking
them gives $H \in \mathbb{R}^{n \times d}$ and $W \in \mathbb{R}^{m \times d}$, and the relevance of every
(utterance, persona sentence) pair is

$$U = \frac{H W^\top}{\sqrt{d}} \in \mathbb{R}^{n \times m} \qquad \text{(Eq. 11)}$$
"""),
    code('''
config = rc.ReceiverConfig.released_code if receiver_released_code else rc.ReceiverConfig
config = config(backbone=receiver_backbone, max_length=receiver_max_length, margin=receiver_margin,
                l1_beta=receiver_l1_beta, tau_start=receiver_tau_start, tau_end=receiver_tau_end,
                score_tau=receiver_tau_end, distractor=receiver_distractor, train_layers=receiver_train_layers)
receiver = rc.Receiver.from_backbone(config).to(device)
n_params = sum(p.numel() for p in receiver.parameters())
n_train = sum(p.numel() for p in receiver.parameters() if p.requires_grad)
print(config)
print(f"{n_params / 1e6:.1f}M parameters ({n_train / 1e6:.1f}M trained), d = {receiver.dim}, "
      f"shared encoder: {config.shared_encoder}")
U = receiver.relevance_matrix(side.utterances, side.persona)
print("U shape (utterances x persona sentences):", tuple(U.shape))
pd.DataFrame(U.numpy(), index=[u[:40] for u in side.utterances], columns=[w[:25] for w in side.persona]).round(3)
'''),
    md(r"""
## 3. Aggregation (Eq. 13), the cumulative score (Eq. 14) and the utterance score (Eq. 15)

An utterance usually speaks to *one* persona sentence, so each row of $U$ is pooled by a temperature-weighted
softmax average

$$\mathrm{Agg}(U_{i,:}) = \sum_{j=1}^{m} \frac{\exp(U_{ij}/\tau)}{\sum_{k}\exp(U_{ik}/\tau)}\,U_{ij}
\qquad \text{(Eq. 13)}$$

which is the plain mean for large $\tau$ and the max for small $\tau$; $\tau$ is annealed linearly from 10 to 0.5
during training. The speaker's **cumulative score** averages over utterances, and a single utterance's score is
the same with $n = 1$ (the self-play reward):

$$c(x, w) = \frac{1}{n}\sum_{i=1}^{n} \mathrm{Agg}(U_{i,:}) \quad \text{(Eq. 14)}\qquad
\mathrm{score}(x_i, w) = \mathrm{Agg}(U_{i,:}) \quad \text{(Eq. 15)}$$

Check: $c$ moves from the mean of $U$ towards the mean of the row maxima as $\tau$ falls.
"""),
    code('''
U3 = U.unsqueeze(0)  # (1, n, m)
for tau in (receiver_tau_start, 1.0, receiver_tau_end, 1e-3):
    print(f"tau={tau:<6} c = {rc.cumulative_score(U3, tau).item():+.4f}")
print(f"mean of U       = {U.mean().item():+.4f};  mean of row maxima = {U.max(1).values.mean().item():+.4f}")
scores = rc.score_utterances(receiver, list(side.utterances[:3]), [side.persona] * 3)
print("Eq. 15 scores of the first three utterances:", [round(s, 4) for s in scores.tolist()])
'''),
    md(r"""
## 4. Training objective (Eq. 12)

For each side, a **distractor persona** $Z$ is drawn once (fixed seed): by default a real persona of *another*
persona group (`persona`); the released code instead replaces every sentence by a random pool sentence
(`combination`). The loss asks the true persona $A$ to beat $Z$ by a margin $m = 0.4$ and keeps the relevance
matrix sparse with an L1 penalty ($\beta = 10^{-4}$, on $U$ of the true persona):

$$\mathcal{L} = \max\bigl(0,\; m + c(x, Z) - c(x, A)\bigr) + \beta\,\lVert U \rVert_1 \qquad \text{(Eq. 12)}$$

Distractors come from the training sides' own personas, so no test persona is ever seen, not even as a negative.
On a CPU budget (`demo`), a random distractor is soon too easy (the hinge is zero for almost every example), so
`receiver_hard_k = k > 1` draws $k$ personas and keeps the one sharing most words with the side (TF-IDF cosine);
the paper's setting is $k = 1$.
"""),
    code('''
examples = []
for m, sp in splits.items():
    examples += probing.build_examples(sp.train, probing.pool_from_sides(sp.train), config.distractor, seed,
                                       hard_k=receiver_hard_k)
print(f"{len(examples)} training triples from modes {receiver_train_modes}")
ex = examples[0]
print("true persona:      ", ex.persona)
print("distractor persona:", ex.distractor)
batch = rc.collate_examples(examples[:2], receiver.tokenizer, config.max_length)
with torch.no_grad():
    print({k: round(float(v), 4) for k, v in rc.receiver_loss(receiver(batch), config, 0.0).items()})
'''),
    md(r"""
## 5. Training

The shared loop (`p2bot_utils.training.train`, Hugging Face `accelerate`) runs AdamW with a linear schedule,
checkpoints under `<receiver_dir>/run/checkpoint/` and **resumes** from there when re-run. The loss function passes
the loop's `progress` (step / total steps) to the $\tau$ schedule. Each logged row holds the loss, the hinge and
L1 parts, the **margin accuracy** (fraction of the batch with $c(x, A) > c(x, Z)$) and $\tau$.
"""),
    code('''
train_cfg = TrainConfig.from_params(params, "receiver_", out_dir=str(out_dir / "run"),
                                    log_csv=str(results_dir / "receiver_log.csv"))
print(train_cfg)
t_train = time.time()
result = rc.train_receiver(receiver, examples, train_cfg)
train_s = time.time() - t_train
receiver.save_pretrained(out_dir)
print(f"{result.steps} optimizer steps in {train_s:.0f} s, final loss {result.final_loss:.4f}; saved to {out_dir}")
'''),
    code('''
log = pd.DataFrame(result.log)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for ax, col, title in zip(axes, ("loss", "margin_acc", "tau"), ("loss (Eq. 12)", "margin accuracy", "tau (Eq. 13)")):
    if col in log:
        ax.plot(log["step"], log[col], marker="." if len(log) < 30 else None)
    ax.set(title=title, xlabel="optimizer step")
fig.suptitle(f"Receiver training: {profile} profile, {source} data, {receiver_backbone}")
prof.save_figure(fig, figures_dir / "receiver_training")
plt.show()
'''),
    md(r"""
## 6. A check on held-out sides

Margin accuracy on the **dev** sides (one distractor each, another group's persona), before and after training,
with the saved folder re-loaded to confirm the round trip.
"""),
    code('''
sp0 = splits[receiver_train_modes[0]]
dev_examples = probing.build_examples(sp0.dev, probing.pool_from_sides([*sp0.train, *sp0.dev]), "persona", seed + 1)

def dev_margin_accuracy(model):
    wins = [float(model.cumulative_scores(e.utterances, [e.persona, e.distractor]).argmax() == 0)
            for e in dev_examples]
    return sum(wins) / len(wins), len(wins)

reloaded = rc.Receiver.from_pretrained(out_dir, device=device)
untrained = rc.Receiver.from_backbone(config).to(device).eval()
acc_before, n_dev = dev_margin_accuracy(untrained)
acc_after, _ = dev_margin_accuracy(reloaded)
print(f"dev margin accuracy ({n_dev} sides, {receiver_train_modes[0]} personas): "
      f"untrained {acc_before:.3f} -> trained {acc_after:.3f}")
'''),
    code('''
prof.update_manifest(results_dir, "02_receiver", params, wall_time_s=time.time() - t0, data_source=source,
                     split_method=splits[receiver_train_modes[0]].info["split_method"],
                     sides={m: sp.info["sides"] for m, sp in splits.items()}, receiver_dir=str(out_dir),
                     train_steps=result.steps, train_seconds=round(train_s, 1), final_loss=result.final_loss,
                     dev_margin_accuracy={"untrained": acc_before, "trained": acc_after, "n": n_dev},
                     receiver_config=dataclasses.asdict(config))
print("manifest updated:", results_dir / "manifest.json")
'''),
]

# ------------------------------------------------------------------------------------------------------------
PROBING = [
    md(r"""
# 05 · Persona probing (paper Sec. 5.4, Table 5 and Figure 6)

Does the trained Receiver really *perceive* personas? For every dialogue side of the test split, the true persona is
hidden among **31 distractor personas** (real personas of other persona groups, fixed seed), and each method ranks
the 32 candidates by its score. We compare:

- **Random**: the exact expectation of a random ranking (not one draw);
- **IR**: TF-IDF cosine between the side's utterances and a persona (scikit-learn);
- **Receiver (untrained)**: the same encoders before training (zero-shot), to show what training adds;
- **Receiver**: the trained model of notebook 02, ranking by its cumulative score $c(x, w)$ (Eq. 14).

With **revised** personas (paraphrased, little word overlap) IR should collapse while the Receiver should not.
"""),
    code('''
# Parameters (papermill overrides them from configs/<profile>.yaml; the defaults are the smoke profile)
profile = "smoke"
seed = 0
data_dir = ""                        # empty: P2BOT_DATA_DIR, then ./data (demo/paper)
use_sample = True
split_fractions = [0.8, 0.1, 0.1]
device = "auto"
probe_receiver_dir = ""              # empty: runs/<profile>/receiver (written by 02_receiver)
probe_zero_shot_backbone = "tiny-bert"  # untrained Receiver for comparison; empty: skip
probe_modes = ["original", "revised"]
probe_part = "test"
probe_n_candidates = 8               # smoke: the sample has 10 persona groups (demo/paper: 32)
probe_mrr_pool = "candidates"        # "candidates" (the 32 personas' sentences) | "all" (every persona sentence)
probe_heatmap_index = 0              # which test side of the revised split Figure 6 shows
probe_select_tau = True              # pick the scoring tau on the dev sides (False: the final training tau, paper)
probe_tau_grid = [0.5, 1.0, 2.0, 5.0, 10.0]
''', tags=("parameters",)),
    code('''
import dataclasses
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from p2bot_utils import plots, probing, profile as prof, receiver as rc

t0 = time.time()
prof.set_seed(seed)
params = {k: v for k, v in globals().items() if k in {"profile", "seed", "data_dir", "use_sample", "split_fractions",
                                                        "device"} or k.startswith("probe_")}
device = prof.pick_device(device)
'''),
    md(r"""
## 1. The probe set

Sides, persona groups and the split are those of notebook 02 (`probing.load_sides`): test sides belong to persona
groups never trained on. Candidates are drawn from the personas of **all** sides of the same persona file (so in
revised mode the distractors are revised personas too), each from a different group than the truth and from each
other.
"""),
    code('''
splits = {m: probing.load_sides(data_dir or None, m, seed, split_fractions, use_sample=use_sample) for m in probe_modes}
source = next(iter(splits.values())).source
results_dir, figures_dir = prof.output_dirs(profile, source)
receiver_dir = Path(probe_receiver_dir) if probe_receiver_dir else prof.runs_dir(profile, source) / "receiver"
if source == "sample":
    print("#" * 100)
    print("#  USING THE SHIPPED SYNTHETIC SAMPLE, NOT PERSONA-CHAT: numbers below say nothing about the paper.")
    print("#" * 100)
# the shipped sample has 10 persona groups: there, fewer candidates than asked (the same number for every side)
few = source == "sample"
probes = {m: probing.probe_setup(sp, probe_part, probe_n_candidates, seed, allow_fewer=few) for m, sp in splits.items()}
for m, (items, sentences) in probes.items():
    n_cand = len(items[0].candidates) if items else probe_n_candidates
    if n_cand < probe_n_candidates:
        print(f"!!! {m}: only {n_cand} candidates per side (asked {probe_n_candidates}): the sample has too few persona groups")
    print(f"{m}: {len(items)} {probe_part} sides, {n_cand} candidates each, "
          f"{len(sentences)} distinct persona sentences in the pool")
'''),
    md(r"""
## 2. Metrics

**Hits@1** is the fraction of sides whose true persona is ranked first among the 32 candidates.

**MRR** follows the paper's wording, *given the dialogue and the complete set of profile sentences*: the candidates'
sentences are pooled, each sentence $s$ is scored alone as the one-sentence persona $\{s\}$ (for the Receiver
$c(x, \{s\}) = \frac1n\sum_i U_{is}$), and each of the side's own sentences $w_j$ gets the rank
$r_j = 1 + \#\{\text{other people's sentences scored above } w_j\}$ (own sentences do not push each other down):

$$\mathrm{MRR} = \frac{1}{|\mathcal{S}|}\sum_{x \in \mathcal{S}} \frac{1}{m_x}\sum_{j=1}^{m_x}\frac{1}{r_j}$$

The Receiver ranks by $c(x, w)$ with the scoring $\tau$ of Eq. 13: the final training value (0.5, the paper) or,
with `probe_select_tau`, the value of `probe_tau_grid` with the best Hits@1 on the **dev** sides (model selection
on held-out persona groups; the test sides are never used to choose it).

Ties are broken uniformly at random in expectation, which makes **Random** exact: Hits@1 $= 1/32$, and
$\mathbb{E}[1/r] = H_M / M$ with $M$ the number of competitors plus one. (The paper's Random MRR of 0.2% implies a
pool of thousands of sentences; `probe_mrr_pool = "all"` pools every persona sentence of the persona file.)
Every mean comes with its standard error and count.
"""),
    code('''
trained = rc.Receiver.from_pretrained(receiver_dir, device=device)
receivers = {"Receiver": probing.ReceiverScorer(trained)}  # each caches its text embeddings across modes
if probe_zero_shot_backbone:
    untrained = rc.Receiver.from_backbone(dataclasses.replace(trained.config, backbone=probe_zero_shot_backbone))
    receivers = {"Receiver (untrained)": probing.ReceiverScorer(untrained.to(device)), **receivers}
tau_choice = {}
if probe_select_tau:  # model selection on held-out dev sides, never on the test sides
    dev_items = [it for sp in splits.values() for it in probing.probe_setup(sp, "dev", probe_n_candidates, seed, allow_fewer=few)[0]]
    for label, sc in receivers.items():
        tau_choice[label], dev_hits = probing.select_score_tau(sc, dev_items, probe_tau_grid)
        print(f"{label}: dev Hits@1 by tau {dev_hits} -> scoring tau {tau_choice[label]}")
rows = []
for m, (items, sentences) in probes.items():
    scorers = {"Random": probing.RandomScorer(), "IR": probing.IRScorer(probing.ir_corpus(items)), **receivers}
    for r in probing.run_probe(items, scorers, probe_mrr_pool, sentences):
        rows.append({"personas": m, **{k: v for k, v in r.items() if not k.startswith("per_item")}})
measured = pd.DataFrame(rows)
measured
'''),
    md(r"""
## 3. Table 5 next to the paper

Measured rows (this run: data, split, model) and the paper's cited rows (PERSONA-CHAT test set, BERT-base
Receiver, 32 candidates), in %.
"""),
    code('''
trained_cfg = trained.config
tau_note = lambda label: f", tau {tau_choice[label]:g} (dev)" if label in tau_choice else ""  # noqa: E731
model_of = {"Random": "-", "IR": "TF-IDF (scikit-learn)",
            "Receiver (untrained)": f"{probe_zero_shot_backbone}, untrained" + tau_note("Receiver (untrained)"),
            "Receiver": f"{trained_cfg.backbone}, trained ({receiver_dir.name})" + tau_note("Receiver")}
table = [{"method": r["method"], "personas": r["personas"], "Hits@1 (%)": 100 * r["hits@1"],
          "Hits@1 SE": 100 * r["hits@1_se"], "MRR (%)": 100 * r["mrr"], "MRR SE": 100 * r["mrr_se"], "n": r["n"],
          "source": "measured", "data": f"{source}, {probe_part} split ({splits[r['personas']].info['split_method']})",
          "model": model_of[r["method"]]} for r in rows]
for (method, mode), (h, mrr_) in probing.PAPER_TABLE5.items():
    if mode in probe_modes:
        table.append({"method": method, "personas": mode, "Hits@1 (%)": h, "Hits@1 SE": None, "MRR (%)": mrr_,
                      "MRR SE": None, "n": None, "source": "cited (paper Table 5)",
                      "data": "PERSONA-CHAT test", "model": "BERT-base Receiver" if method == "Receiver" else "-"})
order = {"Random": 0, "IR": 1, "Receiver (untrained)": 2, "Receiver": 3}
table5 = pd.DataFrame(table)
table5 = table5.sort_values(["personas", "method", "source"], key=lambda c: c.map(order) if c.name == "method" else c,
                            kind="stable", ascending=[True, True, False]).reset_index(drop=True)
prof.write_table(table5, results_dir / "table5_persona_probing", floatfmt=".1f")
prof.atomic_write_json(results_dir / "table5_persona_probing.json",
                       {"rows": rows, "mrr_pool": probe_mrr_pool, "n_candidates": probe_n_candidates,
                        "split": {m: sp.info for m, sp in splits.items()}})
table5
'''),
    code('''
for m in probe_modes:
    got = {r["method"]: r["hits@1"] for r in rows if r["personas"] == m}
    verdict = "beats" if got["Receiver"] > got["IR"] else "does NOT beat"
    extra = (f"; untrained {100 * got['Receiver (untrained)']:.1f}%" if "Receiver (untrained)" in got else "")
    print(f"{m}: trained Receiver {100 * got['Receiver']:.1f}% {verdict} IR {100 * got['IR']:.1f}% on Hits@1{extra}")
'''),
    md(r"""
## 4. Figure 6: what the Receiver attends to

The relevance matrix $U$ (Eq. 11) between the utterances of one test dialogue side and its **revised** persona: each
row is an utterance, each column a persona sentence. A trained Receiver lights up the persona sentence an
utterance paraphrases, even without shared words.
"""),
    code('''
mode6 = "revised" if "revised" in splits else probe_modes[0]
side6 = getattr(splits[mode6], probe_part)[probe_heatmap_index]
U6 = trained.relevance_matrix(side6.utterances, side6.persona)
ax = plots.relevance_heatmap(U6.numpy(), side6.utterances, side6.persona,
                             title=f"Figure 6: relevance U, {mode6} persona ({profile}, {source} data)")
prof.save_figure(ax.figure, figures_dir / "figure6_relevance_heatmap")
plt.show()
'''),
    code('''
prof.update_manifest(results_dir, "05_persona_probing", params, wall_time_s=time.time() - t0, data_source=source,
                     receiver_dir=str(receiver_dir), receiver_backbone=trained_cfg.backbone,
                     probe_sides={m: len(p[0]) for m, p in probes.items()}, scoring_tau=tau_choice,
                     table5={f"{r['method']}|{r['personas']}": {"hits@1": r["hits@1"], "mrr": r["mrr"], "n": r["n"]}
                             for r in rows})
print("wrote", results_dir / "table5_persona_probing.md")
'''),
]

if __name__ == "__main__":
    write("02_receiver.ipynb", RECEIVER)
    write("05_persona_probing.ipynb", PROBING)
