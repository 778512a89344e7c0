"""Tables 1, 3 and 4 and the IR baseline, as specifications on fixed, hand-computed inputs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from p2bot_utils import ir, tables

# The paper's numbers, typed again here from the paper (independent of tables.CITED_*): Hits@1 / ppl / F1.
PAPER_TABLE1 = {
    "KV Profile Memory": (("54.8", "–", "14.25"), ("38.1", "–", "13.65")),
    "Dually Interactive Matching": (("78.8", "–", "–"), ("70.7", "–", "–")),
    "Generative Profile Memory": (("10.2", "35.01", "16.29"), ("9.9", "34.94", "15.71")),
    "Language Model": (("–", "50.67", "16.30"), ("–", "51.61", "13.59")),
    "Seq2Seq-Attn": (("12.5", "35.07", "16.82"), ("9.8", "39.54", "15.52")),
    "Lost In Conversation": (("17.3", "–", "17.79"), ("16.2", "–", "16.83")),
    "TransferTransfo": (("82.1", "17.51", "19.09"), ("–", "–", "–")),
    "P²Bot": (("81.9", "15.12", "19.77"), ("68.6", "18.89", "19.08")),
}
PAPER_TABLE3 = {"P²Bot-S": ("68.7", "18.14", "0.56"), "−Persona": ("65.5", "17.77", "0.57"),
                "−Next": ("17.6", "18.11", "0.55"), "+RS.1": ("68.4", "18.32", "0.60"),
                "+RS.1+RS.2": ("68.6", "18.41", "0.61"), "+RS.1+RS.2+RS.3": ("68.6", "19.08", "0.75")}
T1_COLS = ("Hits@1 %", "ppl", "F1 %")


def summ(mean, stderr, n):
    return {"mean": mean, "stderr": stderr, "n": n}


def record(system, personas, hits, f1=0.2, bleu=0.01, ppl=20.0, seed=0, n=40):
    return {"system": system, "personas": personas, "seed": seed, "split": "test (persona-group)",
            "candidates": "sampled", "tokenizer": "gpt2", "model": "tiny-gpt2",
            "metrics": {"hits@1": summ(hits, 0.05, n), "f1": summ(f1, 0.01, n), "bleu": summ(bleu, 0.002, n),
                        "ppl": summ(ppl, 1.2, 512)}}


# --- Table 1 -------------------------------------------------------------------------------------------
def test_table1_carries_every_cited_number_exactly_as_printed():
    df = tables.build_table1([])
    assert list(df["system"]) == list(PAPER_TABLE1)
    assert set(df["kind"]) == {"cited"}
    for _, row in df.iterrows():
        orig, rev = PAPER_TABLE1[row["system"]]
        assert tuple(row[f"orig {c}"] for c in T1_COLS) == orig, row["system"]
        assert tuple(row[f"rev {c}"] for c in T1_COLS) == rev, row["system"]
        assert row["source"] == "cited: Liu et al. (2020), Table 1"


def test_long_table_keeps_cited_values_unscaled():
    long = tables.long_table([])
    lm = long[(long.system == "Language Model") & (long.personas == "original") & (long.metric == "f1")]
    assert lm["value"].tolist() == [16.30]
    kv = long[(long.system == "KV Profile Memory") & (long.personas == "revised") & (long.metric == "hits@1")]
    assert kv["value"].tolist() == [38.1]  # exactly, not 0.381 * 100
    bleu = long[(long.table == "Table 3") & (long.system == "+RS.1+RS.2+RS.3") & (long.metric == "bleu")]
    assert bleu["value"].tolist() == [0.75]


def test_measured_row_shows_percent_stderr_n_and_provenance():
    recs = [record("P²Bot-S", "original", 0.4), record("P²Bot-S", "revised", 0.3, ppl=21.456)]
    row = tables.build_table1(recs).iloc[-1]
    assert row["system"] == "P²Bot-S" and row["kind"] == "measured"
    assert row["orig Hits@1 %"] == "40.0 ± 5.0 (n=40)"
    assert row["orig F1 %"] == "20.00 ± 1.00 (n=40)"
    assert row["rev ppl"] == "21.46 ± 1.20 (n=512)"
    assert (row["split"], row["candidates"], row["tokenizer"], row["model"]) == \
        ("test (persona-group)", "sampled", "gpt2", "tiny-gpt2")
    assert "stderr" in row["source"]


def test_measured_system_with_one_persona_variant_shows_dashes_for_the_other():
    row = tables.build_table1([record("IR", "original", 0.25)]).iloc[-1]
    assert row["rev Hits@1 %"] == "–" and row["orig Hits@1 %"].startswith("25.0")


def test_several_seeds_become_mean_and_std_over_seeds():
    recs = [record("P²Bot", "original", 0.40, seed=0), record("P²Bot", "original", 0.50, seed=1)]
    (agg,) = tables.aggregate_seeds(recs)
    assert agg["n_seeds"] == 2 and agg["seeds"] == [0, 1]
    assert agg["metrics"]["hits@1"]["mean"] == pytest.approx(0.45)
    assert agg["metrics"]["hits@1"]["stderr"] == pytest.approx(math.sqrt(0.005))  # std ddof=1 of 0.40, 0.50
    row = tables.build_table1(recs).iloc[-1]
    assert row["orig Hits@1 %"] == "45.0 ± 7.1 (2 seeds, n=40)"
    assert "std over 2 seeds" in row["source"]


def test_bad_records_are_refused_with_the_system_named():
    with pytest.raises(ValueError, match="'P²Bot'.*personas"):
        tables.build_table1([{**record("P²Bot", "original", 0.4), "personas": "both"}])
    with pytest.raises(ValueError, match="metric 'f1'"):
        tables.build_table1([{**record("P²Bot", "original", 0.4), "metrics": {"f1": 0.2}}])


# --- Table 3 -------------------------------------------------------------------------------------------
def test_relative_change_is_hand_computed():
    assert tables.relative_change(65.5, 68.7) == pytest.approx(-4.6579, abs=1e-4)
    assert tables.relative_change(0.75, 0.56) == pytest.approx(33.9286, abs=1e-4)
    assert math.isnan(tables.relative_change(1.0, 0.0)) and math.isnan(tables.relative_change(None, 1.0))
    assert tables.fmt_change(-4.6579) == "-4.7%" and tables.fmt_change(5.18) == "+5.2%"
    assert tables.fmt_change(0.0) == "0.0%" and tables.fmt_change(math.nan) == "–"


def test_table3_cited_rows_and_their_relative_changes():
    df = tables.build_table3([])
    assert list(df["variant"]) == list(PAPER_TABLE3) and set(df["kind"]) == {"cited"}
    for _, row in df.iterrows():
        assert (row["Hits@1 %"], row["F1 %"], row["BLEU ×100"]) == PAPER_TABLE3[row["variant"]]
    by = df.set_index("variant")
    assert by.loc["P²Bot-S", "Δ Hits@1"] == "0.0%"
    assert by.loc["−Persona", "Δ Hits@1"] == "-4.7%"       # (65.5 − 68.7) / 68.7
    assert by.loc["−Next", "Δ Hits@1"] == "-74.4%"         # (17.6 − 68.7) / 68.7
    assert by.loc["+RS.1+RS.2+RS.3", "Δ F1"] == "+5.2%"    # (19.08 − 18.14) / 18.14
    assert by.loc["+RS.1+RS.2+RS.3", "Δ BLEU"] == "+33.9%"  # (0.75 − 0.56) / 0.56


def test_table3_measured_rows_compare_with_measured_baseline_and_sit_next_to_cited():
    recs = [record("P²Bot-S", "revised", 0.50, f1=0.20), record("−Next", "revised", 0.40, f1=0.21),
            record("−Next", "original", 0.99)]  # original personas are not part of Table 3
    df = tables.build_table3(recs)
    assert list(zip(df["variant"], df["kind"]))[:4] == [
        ("P²Bot-S", "measured"), ("P²Bot-S", "cited"), ("−Persona", "cited"), ("−Next", "measured")]
    nxt = df[(df.variant == "−Next") & (df.kind == "measured")].iloc[0]
    assert nxt["Hits@1 %"] == "40.0 ± 5.0 (n=40)"
    assert nxt["Δ Hits@1"] == "-20.0%" and nxt["Δ F1"] == "+5.0%"
    assert nxt["candidates"] == "sampled"


def test_table3_measured_variant_without_measured_baseline_has_no_change():
    df = tables.build_table3([record("+RS.1", "revised", 0.5)])
    assert df[(df.variant == "+RS.1") & (df.kind == "measured")].iloc[0]["Δ Hits@1"] == "–"


# --- Table 4 -------------------------------------------------------------------------------------------
def test_sample_table_lists_persona_context_human_and_each_system():
    s = {"example": 7, "persona": ["i like cats.", "i am a nurse."], "context": ["hi", "hello | there", "how are you?"],
         "human": "great , just fed my cats .", "replies": {"P²Bot-S": "good !", "P²Bot": "fine , my cat is fed ."}}
    df = tables.build_sample_table([s], context_turns=2)
    assert df["role"].tolist() == ["persona", "context (self)", "context (partner)", "human", "P²Bot-S", "P²Bot"]
    assert df["text"].tolist()[:3] == ["i like cats.; i am a nurse.", "hello / there", "how are you?"]
    with pytest.raises(ValueError, match="lacks 'human'"):
        tables.build_sample_table([{k: v for k, v in s.items() if k != "human"}])


# --- IR baseline ---------------------------------------------------------------------------------------
CORPUS = ["i love my dog", "my dog is big", "i play guitar", "what do you do", "i am a teacher",
          "do you have pets", "i like rock music", "the weather is nice"]


def test_ir_ranks_the_candidate_sharing_rare_words_first():
    r = ir.TfidfRanker(CORPUS)
    cands = ["the weather is nice", "i play rock guitar", "what do you do"]
    order = ir.ir_rank_candidates(r, ["i play guitar in a rock band"], ["do you like music ?"], cands)
    assert order[0] == 1
    # without the persona the query is only the history, which shares "do" / "you" with candidate 2
    no_persona = ir.ir_rank_candidates(r, ["i play guitar in a rock band"], ["what do you do ?"], cands,
                                       use_persona=False)
    assert no_persona[0] == 2


def _episode(turns):
    return SimpleNamespace(episode_id="fixture:0", own_persona=("i have a big dog",),
                           turns=tuple(SimpleNamespace(partner=p, reply=r, candidates=c) for p, r, c in turns))


def test_evaluate_ir_hand_example():
    ep = _episode([("__SILENCE__", "my dog is big", ("i play guitar", "the weather is nice", "my dog is big")),
                   ("do you have pets", "i play guitar", ("my dog is big", "i play guitar"))])
    out = ir.evaluate_ir(ir.TfidfRanker(CORPUS), [ep])
    # turn 0: gold shares "dog"/"big" with the persona -> rank 1; turn 1: "my dog is big" beats the gold -> rank 2
    assert out["hits@1"]["mean"] == pytest.approx(0.5) and out["hits@1"]["n"] == 2
    assert out["mrr"]["mean"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["f1"]["mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert ir.turn_history(ep, 1) == ["__SILENCE__", "my dog is big", "do you have pets"]
    only_second = ir.evaluate_ir(ir.TfidfRanker(CORPUS), [ep], turns=[(0, 1)])
    assert only_second["hits@1"]["mean"] == 0.0 and only_second["hits@1"]["n"] == 1


def test_evaluate_ir_refuses_turns_without_the_gold_last():
    ep = _episode([("hi", "my dog is big", ("my dog is big", "i play guitar"))])
    with pytest.raises(ValueError, match="fixture:0 turn 0.*gold LAST"):
        ir.evaluate_ir(ir.TfidfRanker(CORPUS), [ep])
    with pytest.raises(ValueError, match="corpus is empty"):
        ir.TfidfRanker([])


# --- adapter from the evaluation functions -------------------------------------------------------------
def test_record_from_transmitter_eval_dict():
    res = {"n_turns": 30, "n_candidates": 20, "seed": 0, "ranking": "nup", "tokenizer": "smollm2-135m",
           "backbone": "smollm2-135m", "variant": "full", "ppl": 18.234, "ppl_ci95": (16.5, 20.125),
           "n_reply_tokens": 420, "hits@1": 0.3, "hits@1_se": 0.0851, "mrr": 0.45, "mrr_se": 0.06,
           "n_gen_turns": 10, "f1": 0.155, "f1_se": 0.021, "bleu": 0.0123, "bleu_se": 0.004}
    rec = tables.record_from_eval(res, "P²Bot-S", "revised", "test (persona-group)", "sampled")
    assert rec["metrics"]["hits@1"] == {"mean": 0.3, "stderr": 0.0851, "n": 30}
    assert rec["metrics"]["f1"]["n"] == 10 and rec["tokenizer"] == "smollm2-135m" and rec["seed"] == 0
    assert tables.fmt_measured("ppl", rec["metrics"]["ppl"]) == "18.23 [16.50, 20.12] (n=30)"
    assert tables.fmt_measured("bleu", rec["metrics"]["bleu"]) == "1.23 ± 0.40 (n=10)"
    long = tables.long_table([rec], include_cited=False).set_index("metric")
    assert long.loc["ppl", "ci95_high"] == 20.125 and long.loc["hits@1", "value"] == pytest.approx(30.0)
    ir_rec = tables.record_from_eval({"hits@1": summ(0.25, 0.1, 12)}, "IR", "original", "test", "sampled",
                                     model="TF-IDF")
    assert ir_rec["metrics"] == {"hits@1": {"mean": 0.25, "stderr": 0.1, "n": 12}} and ir_rec["model"] == "TF-IDF"


def test_table1_systems_filter_and_order_and_the_evaluation_plan():
    recs = [record("P²Bot", "original", 0.5), record("+RS.1", "revised", 0.1), record("IR", "original", 0.2)]
    df = tables.build_table1(recs, systems=("untrained backbone", "IR", "P²Bot-S", "P²Bot"))
    assert df[df.kind == "measured"]["system"].tolist() == ["IR", "P²Bot"]
    assert "IR" not in tables.build_table3([record("IR", "revised", 0.2)])["variant"].tolist()
    plan = tables.evaluation_plan()
    assert ("transmitter", "original", ("P²Bot-S",)) in plan
    assert ("selfplay-p2bot", "original", ("+RS.1+RS.2+RS.3", "P²Bot")) in plan
    assert ("transmitter-no_next", "revised", ("−Next",)) in plan
    assert ("transmitter-no_next", "original", ("−Next",)) not in plan and len(plan) == 8


def test_paired_differences_on_hand_made_turns():
    """P²Bot vs P²Bot-S on 4 shared turns: Hits@1 per turn (rank 1 = hit) 1,0,1,1 vs 0,0,1,0 -> differences
    100, 0, 0, 100: mean 50, SD 57.735, SE 28.87 (not beyond 2 SE); F1 differences 10, 10, 10, 10 -> SE 0."""
    evals = [{"systems": ["+RS.1+RS.2+RS.3", "P²Bot"], "personas": "original", "per_turn_rank": [1, 3, 1, 1],
              "per_turn_f1": [0.3, 0.2, 0.2, 0.4]},
             {"systems": ["P²Bot-S"], "personas": "original", "per_turn_rank": [2, 5, 1, 4],
              "per_turn_f1": [0.2, 0.1, 0.1, 0.3]}]
    t = tables.build_paired(evals)
    hits = t[t.metric == "Hits@1 %"].iloc[0]
    assert (hits.comparison, hits.personas, hits["n turns"]) == ("P²Bot − P²Bot-S", "original", 4)
    assert hits.difference == 50.0 and hits.SE == pytest.approx(28.87, abs=0.01) and not hits["beyond 2 SE"]
    f1 = t[t.metric == "F1 %"].iloc[0]
    assert f1.difference == pytest.approx(10.0) and f1.SE == pytest.approx(0.0, abs=1e-9) and f1["beyond 2 SE"]
    assert len(t) == 2  # the other comparisons lack a system and are left out
    with pytest.raises(ValueError, match="different turns"):
        tables.build_paired([evals[0], {**evals[1], "per_turn_f1": [0.1, 0.2]}])


def test_paired_perplexity_rows():
    """Per-turn gold NLL and token counts give a ppl row: P²Bot-S (nll 2 and 4 over 2 + 2 tokens, ppl e^1.5)
    minus the untrained backbone (nll 4 and 8, ppl e^3), with a paired bootstrap SE; turns must match."""
    evals = [{"systems": ["P²Bot-S"], "personas": "revised", "per_turn_nll": [2.0, 4.0], "per_turn_ntok": [2, 2]},
             {"systems": [tables.UNTRAINED], "personas": "revised", "per_turn_nll": [4.0, 8.0],
              "per_turn_ntok": [2, 2]}]
    t = tables.build_paired(evals, seed=0)
    row = t.iloc[0]
    assert len(t) == 1 and row.metric == "ppl" and row["n turns"] == 2
    assert row.comparison == "P²Bot-S − untrained backbone" and row.personas == "revised"
    assert row.difference == pytest.approx(round(math.exp(1.5) - math.exp(3.0), 2))
    assert row.SE > 0 and row.SE == tables.build_paired(evals, seed=0).iloc[0].SE   # seeded
    with pytest.raises(ValueError, match="different turns"):
        tables.build_paired([evals[0], {**evals[1], "per_turn_nll": [4.0], "per_turn_ntok": [2]}])


def test_budget_text_names_each_models_training():
    """Tables 1 / 3 print each model's training budget (saved with the model) beside it."""
    assert tables.budget_text({"optimizer_steps": 100}) == "100 optimizer steps"
    assert tables.budget_text({"optimizer_steps": 100, "selfplay_updates": 10, "selfplay_dialogues_per_update": 4}) \
        == "100 optimizer steps + 10 self-play updates of 4 dialogues"
    assert tables.budget_text({"selfplay_updates": 3}) == "3 self-play updates"
    assert tables.budget_text({}) == tables.budget_text(None) == "training budget not recorded"
