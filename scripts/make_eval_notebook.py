"""Writes notebooks/04_automatic_eval.ipynb, without outputs. Run: .venv/bin/python scripts/make_eval_notebook.py"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parent.parent / "notebooks" / "04_automatic_eval.ipynb"
cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip()))  # noqa: E731
code = lambda s, **kw: cells.append(new_code_cell(s.strip(), **kw))  # noqa: E731

md(r"""
# 04 · Automatic evaluation (paper Sec. 5.2–5.3): Table 1, Table 3, sample responses, human-evaluation kit

This notebook evaluates every system that notebooks 01–03 trained for this profile, on the **test** part of the
data, once with the **original** personas and once with the **revised** (rephrased) ones, and lays the numbers
next to the paper's:

* **Table 1** — P²Bot-S (supervised Transmitter), P²Bot (after self-play), the untrained backbone and a TF-IDF
  retrieval baseline (IR), beside the paper's rows (cited exactly, marked *cited*).
* **Table 3** — the variants on revised personas (−Persona, −Next, +RS.1, +RS.1+RS.2, +RS.1+RS.2+RS.3) with the
  relative change against P²Bot-S.
* **Table 4** — sample responses: persona, context, the human reply and each system's reply.
* A blind **rating sheet** for the paper's human evaluation (Table 2, 1–4 scale).

Systems whose model folder is missing are skipped with a printed note. Every measured number carries its
standard error and the number of turns it was computed on; the split, the candidate source (official or
sampled), the tokenizer and the model are written next to it.
""")

code(r"""
profile = "smoke"
seed = 0
data_dir = ""
use_sample = True
persona_clusters = ""
split_fractions = [0.8, 0.1, 0.1]
device = "auto"
eval_runs_dir = ""  # "" = runs/<profile>[-sample]/, where notebooks 01-03 saved the models
eval_split = "test"  # the part evaluated: "test" (or "dev")
eval_max_turns = 4  # seeded subsample of turns per evaluation (0 = every turn)
eval_gen_turns = 2  # F1 / BLEU on the first N of them (beam search is the slow part; 0 = all)
eval_batch_size = 4
eval_alpha = 0.1  # Eq. 3 mixing weight (1.0 = Eq. 2 alone, the released code's choice)
eval_max_new_tokens = 8  # longest generated reply (paper: 32)
eval_n_samples = 2  # Table 4: examples shown
eval_human_n = 2  # examples in the exported rating sheet (at most eval_gen_turns)
eval_human_systems = ["P²Bot-S", "P²Bot", "untrained backbone"]
""", metadata={"tags": ["parameters"]})

code(r"""
import json
import time
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from p2bot_utils import data, human_eval, ir, profile as prof, tables
from p2bot_utils.transmitter import Transmitter, generate_replies
from p2bot_utils.transmitter_eval import evaluate_transmitter, select_turns
from p2bot_utils.transmitter_train import build_transmitter, episode_turns

t0 = time.time()
prof.set_seed(seed)
dev = prof.pick_device(device)
params = dict(profile=profile, seed=seed, data_dir=data_dir, use_sample=use_sample, persona_clusters=persona_clusters,
              split_fractions=split_fractions, device=device, eval_runs_dir=eval_runs_dir, eval_split=eval_split,
              eval_max_turns=eval_max_turns, eval_gen_turns=eval_gen_turns, eval_batch_size=eval_batch_size,
              eval_alpha=eval_alpha, eval_max_new_tokens=eval_max_new_tokens, eval_n_samples=eval_n_samples,
              eval_human_n=eval_human_n, eval_human_systems=eval_human_systems)
""")

md(r"""
## The data: one episode partition, two persona variants

The same episodes are read twice, with the original personas and with the revised ones (the partition into
train / dev / test is identical). When only validation files exist, the split is by persona group and each turn's
19 distractor candidates are sampled from other episodes with a fixed seed; the tables say so.
""")

code(r"""
datasets = {mode: data.load_split_data(data_dir or None, mode=mode, seed=seed, fractions=split_fractions,
                                       use_sample=use_sample, persona_clusters=persona_clusters or None, download=False)
            for mode in tables.PERSONAS}
source = datasets["original"].source
results_dir, figures_dir = prof.output_dirs(profile, source)
runs = Path(eval_runs_dir) if eval_runs_dir else prof.runs_dir(profile, source)
info = datasets["original"].info
split_desc = f"{eval_split} ({info['split_method']})"
parts = {mode: getattr(d, eval_split) for mode, d in datasets.items()}
cand_source = "/".join(sorted({ep.candidate_source for ep in parts["original"]}))
if source != "real":
    print("!!! DATA SOURCE: the shipped SYNTHETIC sample, not PERSONA-CHAT; outputs go to", results_dir)
print(f"data: {info['data_dir']} ({source}); split: {info['split_description']}")
print(f"evaluating the {eval_split} part: {len(parts['original'])} episodes, candidates {cand_source}")
print(f"models from {runs}; tables to {results_dir}")
# which personas the models were trained with: notebook 01 records it in the manifest of this results folder
manifest_path = results_dir / "manifest.json"
manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"notebooks": {}}
nb01 = manifest["notebooks"].get("01_transmitter_mle", {})
trained_on = nb01.get("params", {}).get("transmitter_mode", "unknown")
print(f"the Transmitters were trained with {trained_on} personas (paper: one model per persona variant)")
""")

md(r"""
## What is measured

For every test turn the model sees its own persona $P$ and the dialogue so far; $s$ denotes this context.

* **Hits@1** over the 20 candidates (the gold reply and 19 distractors): the share of turns where the gold reply is
  ranked first. The Transmitter ranks by its next-utterance head, $p(y=1 \mid s, y)$; the −Next variant, which
  has no head, and the untrained backbone rank by the length-normalised likelihood of Eq. 2,
  $\frac{1}{|y|}\log p(y \mid s)$. Ties count in the gold's favour.
* **Perplexity** of the gold reply, per token of the model's own tokenizer (BPE level, as the authors' code):
  $\mathrm{ppl} = \exp\!\big(-\frac{1}{T}\sum_{t} \log p(y_t \mid s, y_{<t})\big)$, summed over all evaluated turns,
  with a bootstrap 95% interval over turns. Numbers from different tokenizers are not comparable; each row names
  its tokenizer.
* **F1** (ParlAI's unigram F1 on normalised text, $F_1 = \frac{2PR}{P+R}$) and **BLEU** (ParlAI's sentence BLEU-4)
  of the generated reply against the gold: beam search of size 2, up to 32 tokens (`eval_max_new_tokens`), the
  final beam chosen by Eq. 3,

$$\hat y = \arg\max_{y \in \text{beams}} \; \alpha \cdot \tfrac{1}{|y|}\log p(y \mid s) + (1-\alpha)\cdot \log p(y = 1 \mid s, y), \qquad \alpha = 0.1 .$$

* **IR baseline**: each candidate $c$ scored by the cosine similarity of TF-IDF vectors,
  $\cos\big(\mathrm{tfidf}(P \oplus \text{history}),\ \mathrm{tfidf}(c)\big)$, IDF fitted on the training split; its F1
  and BLEU are those of the top-ranked candidate (no generation). Retrieval picks a human utterance, and the gold
  is among the candidates, so its F1 is not comparable with a generator's.

Percentages are shown ×100, as in the paper (its BLEU column is ParlAI's BLEU ×100).
""")

code(r"""
def provenance_model(folder, model):
    return f"{folder} ({model.config.backbone}, trained on {trained_on} personas)"


jsonl_of = {}  # (system, personas) -> the generated replies (JSONL), for Table 4 and the rating sheet


def eval_model(model, mode, folder, names):
    path = results_dir / "generations" / f"{folder}_{mode}.jsonl"
    jsonl_of.update({(n, mode): path for n in names})
    return evaluate_transmitter(model, parts[mode], max_turns=eval_max_turns or None, seed=seed,
                                gen_turns=eval_gen_turns or None, batch_size=eval_batch_size, alpha=eval_alpha,
                                max_new_tokens=eval_max_new_tokens, jsonl_path=path)


""")

md(r"""
## Evaluating the trained systems

One evaluation per (model folder, persona variant): P²Bot-S and P²Bot on both variants (Table 1), the other
variants on revised personas only (Table 3). P²Bot *is* +RS.1+RS.2+RS.3, so one run feeds both tables.
""")

code(r"""
records, raw, skipped, backbone_cfg = [], [], [], None
plan = tables.evaluation_plan()
for folder in dict.fromkeys(f for f, _, _ in plan):
    path = runs / folder
    names = next(n for f, _, n in plan if f == folder)
    if not (path / "transmitter_config.json").is_file():
        print(f"SKIP {' / '.join(names)}: no trained model in {path} (run notebook 01 / 03 for this profile)")
        skipped.append({"system": " / ".join(names), "folder": str(path)})
        continue
    model = Transmitter.from_pretrained(path).to(dev)
    backbone_cfg = backbone_cfg or model.config
    for f, mode, names in (p for p in plan if p[0] == folder):
        res = eval_model(model, mode, folder, names)
        raw.append({"folder": folder, "personas": mode, "systems": list(names), **res})
        records += [tables.record_from_eval(res, n, mode, split_desc, cand_source, provenance_model(folder, model),
                                            seed) for n in names]
        print(f"{' / '.join(names):>26} {mode:>8}: Hits@1 {res['hits@1']:.3f} ± {res['hits@1_se']:.3f}, "
              f"ppl {res['ppl']:.2f}, F1 {res['f1']:.3f} (n={res['n_turns']})")
    del model
""")

md(r"""
## Baselines: the untrained backbone and IR

The **untrained backbone** is the same pretrained language model before any fine-tuning, wrapped in the same
input layout (its new marker tokens start from random embeddings) and with no next-utterance head, so it ranks
candidates by likelihood (Eq. 2). The **IR** row ranks the same turns by TF-IDF similarity.
""")

code(r"""
if backbone_cfg is None:
    print("SKIP untrained backbone: no trained Transmitter found, so the backbone name is unknown")
    skipped.append({"system": tables.UNTRAINED, "folder": ""})
else:
    base = build_transmitter(backbone_cfg.backbone, "no_next", backbone_cfg.max_len, backbone_cfg.max_reply_tokens,
                             seed).to(dev).eval()
    for mode in tables.PERSONAS:
        res = eval_model(base, mode, "untrained_backbone", [tables.UNTRAINED])
        raw.append({"folder": "", "personas": mode, "systems": [tables.UNTRAINED], **res})
        records.append(tables.record_from_eval(res, tables.UNTRAINED, mode, split_desc, cand_source,
                                               f"{backbone_cfg.backbone}, not fine-tuned", seed))
        print(f"{tables.UNTRAINED:>26} {mode:>8}: Hits@1 {res['hits@1']:.3f}, ppl {res['ppl']:.2f}, F1 {res['f1']:.3f}")
    del base

for mode in tables.PERSONAS:
    ranker = ir.TfidfRanker(ir.episode_corpus(datasets[mode].train))
    index = {ep.episode_id: i for i, ep in enumerate(parts[mode])}
    turns = [(index[t["episode_id"]], t["turn"]) for t in select_turns(parts[mode], eval_max_turns or None, seed)]
    res = ir.evaluate_ir(ranker, parts[mode], turns)
    raw.append({"folder": "", "personas": mode, "systems": [tables.IR_SYSTEM], **res})
    records.append(tables.record_from_eval(res, tables.IR_SYSTEM, mode, split_desc, cand_source,
                                           "TF-IDF over persona + history", seed) | {"tokenizer": "words"})
    print(f"{tables.IR_SYSTEM:>26} {mode:>8}: Hits@1 {res['hits@1']['mean']:.3f} ± {res['hits@1']['stderr']:.3f} "
          f"(n={res['hits@1']['n']})")
""")

md(r"""
## Table 1 — original and revised personas

The paper's rows are cited as printed (Hits@1 %, ppl, F1 %; "–" = not reported). Its perplexities come from
different tokenizers and protocols (the authors' code reports per-BPE-token perplexity of openai-gpt), and its
numbers are on the full ConvAI2 validation set with the official candidates, with one model trained per persona
variant; here one model per system, trained with the personas named in the `model` column, is evaluated on both.
Read the measured rows against each other first, and against the paper only where split, candidates and
tokenizer allow.
""")

code(r"""
table1 = tables.build_table1(records, systems=(tables.UNTRAINED, tables.IR_SYSTEM, "P²Bot-S", "P²Bot"))
prof.write_table(table1, results_dir / "table1")
display(table1)
""")

md(r"""
## Table 3 — variants on revised personas

Each measured row sits above the paper's row for the same variant; $\Delta$ is the relative change against
P²Bot-S of the same kind (measured against measured, cited against cited):

$$\Delta = 100 \cdot \frac{v - v_{\text{P²Bot-S}}}{v_{\text{P²Bot-S}}} \;\%.$$
""")

code(r"""
table3 = tables.build_table3(records)
prof.write_table(table3, results_dir / "table3")
display(table3)
long = tables.long_table(records)
prof.write_table(long, results_dir / "eval_long", floatfmt=".4g")
prof.atomic_write_json(results_dir / "automatic_eval.json",
                       {"data": info, "split": split_desc, "candidates": cand_source, "evaluations": raw,
                        "records": records, "skipped": skipped})
""")

md(r"""
## Table 4 — sample responses

The first turns of the seeded test subsample (original personas) on which the Table 1 systems generated replies:
the speaker's persona, the last turns of the context, what the human said, and each system's Eq. 3 beam-search
reply (all generations are in `generations/*.jsonl` next to the tables).
""")

code(r"""
table4_systems = [n for n in (tables.UNTRAINED, "P²Bot-S", "P²Bot") if (n, "original") in jsonl_of]
gens = {n: [json.loads(line) for line in jsonl_of[(n, "original")].read_text().splitlines()] for n in table4_systems}
samples = []
for i, row in enumerate(next(iter(gens.values()), [])):
    assert all((g[i]["episode_id"], g[i]["turn"]) == (row["episode_id"], row["turn"]) for g in gens.values())
    samples.append({"example": f"{row['episode_id']}#{row['turn']}", "persona": row["persona"],
                    "context": row["history"], "human": row["gold"],
                    "replies": {n: g[i]["reply"] for n, g in gens.items()}})
table4 = tables.build_sample_table(samples[:eval_n_samples])
prof.write_table(table4, results_dir / "table4_samples")
with pd.option_context("display.max_colwidth", 120):
    display(table4)
""")

md(r"""
## Human evaluation kit (paper Table 2)

The paper also asked people to rate responses on a 1–4 scale. We do not have raters here, so this notebook only
prepares the material. In this project's words, a rater reads the speaker's persona and the last turns, then
scores the **response** alone:

| score | meaning |
|---|---|
| 4 | Excellent: fluent, fits the conversation, and naturally shows (or asks about) a persona trait. |
| 3 | Good: fluent and on topic, but generic; it would suit almost any speaker. |
| 2 | Fair: understandable, but partly off topic, repetitive or awkward. |
| 1 | Poor: ungrammatical, incoherent, or contradicts the speaker's persona or the conversation. |

The sheet mixes the systems' replies with the human ones, shuffled, under opaque row ids; the key that maps a
row id back to its system is written to a separate folder and must not be shown to raters. Filled sheets are
read back with `human_eval.import_ratings` (or `python -m p2bot_utils human-eval --key KEY SHEET...`), which
reports the share of each score and the average per system, and a paired Wilcoxon signed-rank test between
systems (per example, ratings averaged over raters).
""")

code(r"""
systems = [s for s in eval_human_systems if s in table4_systems]
missing = sorted(set(eval_human_systems) - set(systems))
if missing:
    print("rating sheet without (not evaluated):", ", ".join(missing))
sheet_samples = [{**s, "replies": {k: s["replies"][k] for k in systems}} for s in samples[:eval_human_n]]
if not sheet_samples or not systems:
    print("SKIP rating sheet: no system generated replies (no trained model found)")
else:
    sheet, key = human_eval.export_rating_sheet(sheet_samples, results_dir / "human_eval" / "rating_sheet.csv",
                                                results_dir / "human_eval_key" / "rating_key.csv", seed=seed)
    print(f"rating sheet: {sheet} ({len(sheet_samples)} examples x {len(systems) + 1} responses, incl. the human)")
    print(f"key (keep apart from raters): {key}")
    display(pd.read_csv(sheet).head(3))
""")

code(r"""
wall = time.time() - t0
prof.update_manifest(results_dir, "04_automatic_eval", params, wall, data_source=source, split=split_desc,
                     candidates=cand_source, models_dir=str(runs),
                     evaluated=sorted({r["system"] for r in records}), skipped=skipped)
print(f"done in {wall:.0f} s; tables in {results_dir}")
""")

nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"},
                                         "language_info": {"name": "python"}})
nbformat.write(nb, str(OUT))
print("wrote", OUT, "with", len(cells), "cells")
