"""Specification of ``p2bot_utils.metrics``: ParlAI's definitions, every number computed by hand."""
import math

import numpy as np
import pytest

from p2bot_utils import metrics as M


# --- normalize_answer --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", "hello world"),                      # lowercase, punctuation -> space
    ("I don't know.", "i don t know"),                     # apostrophe becomes a space: two tokens
    ("The cat and a dog ate an apple", "cat and dog ate apple"),  # whole-word articles removed
    ("theory another banana", "theory another banana"),    # articles only as whole words
    ("A-B_c", "b c"),                                      # '-' and '_' split; lone 'a' is an article
    ("  lots \t of \n  space  ", "lots of space"),        # whitespace collapsed
    ("what?!...", "what"),
    ("", ""),
    ("émoji 🙂 stays", "émoji 🙂 stays"),                  # only ASCII punctuation is removed
])
def test_normalize_answer(text, expected):
    assert M.normalize_answer(text) == expected


def test_normalize_answer_rejects_non_string():
    with pytest.raises(TypeError, match="normalize_answer"):
        M.normalize_answer(None)


# --- f1_score ----------------------------------------------------------------------------------------
def test_f1_identical_after_normalisation_is_one():
    assert M.f1_score("The dog, barks!", "dog barks") == 1.0


def test_f1_hand_computed_partial_overlap():
    # guess tokens: i like dogs (3); answer: i like cats too (4); shared: i, like (2)
    # precision 2/3, recall 2/4 -> F1 = 2*(2/3)*(1/2) / (2/3 + 1/2) = 4/7
    assert M.f1_score("I like dogs.", "i like cats too") == pytest.approx(4 / 7)


def test_f1_repeated_words_use_multiset_intersection():
    # guess: yes yes yes (3); answer: yes no (2); shared = min(3, 1) = 1
    # precision 1/3, recall 1/2 -> F1 = 2*(1/3)*(1/2) / (5/6) = 2/5
    assert M.f1_score("yes yes yes", "yes no") == pytest.approx(0.4)


def test_f1_apostrophe_splits_tokens():
    # "don't" -> "don t": guess tokens don, t, go (3); answer do, not, go (3); shared: go -> F1 = 1/3
    assert M.f1_score("don't go", "do not go") == pytest.approx(1 / 3)


def test_f1_nothing_shared_or_empty_is_zero():
    assert M.f1_score("apples", "oranges") == 0.0
    assert M.f1_score("", "oranges") == 0.0
    assert M.f1_score("apples", "") == 0.0
    assert M.f1_score("the a an", "the") == 0.0          # both normalise to nothing
    assert M.f1_score(None, ["x"]) == 0.0


def test_f1_takes_max_over_answers():
    # against "i like dogs too": p=1, r=3/4 -> 6/7; against "dogs": p=1/3, r=1 -> 1/2
    assert M.f1_score("i like dogs", ["dogs", "i like dogs too", "cats"]) == pytest.approx(6 / 7)


def test_f1_rejects_empty_answer_list():
    with pytest.raises(ValueError, match="answers"):
        M.f1_score("x", [])


# --- bleu_score --------------------------------------------------------------------------------------
def test_bleu_identical_sentence_is_one():
    assert M.bleu_score("i like red apples very much", ["i like red apples very much"]) == pytest.approx(1.0)


def test_bleu_hand_computed_partial():
    # hyp: i like red apples so much / ref: i like red apples very much (6 tokens each, BP = 1)
    # p1 = 5/6, p2 = 3/5 (i like, like red, red apples), p3 = 2/4, p4 = 1/3
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25
    got = M.bleu_score("I like red apples, so much!", "i like red apples very much")
    assert got == pytest.approx((1 / 12) ** 0.25, rel=1e-9)


def test_bleu_brevity_penalty():
    # every n-gram of the 4-token hyp matches; BP = exp(1 - 6/4)
    assert M.bleu_score("i like red apples", "i like red apples very much") == pytest.approx(math.exp(-0.5))


def test_bleu_no_overlap_is_epsilon_small_and_several_answers_take_best_counts():
    assert M.bleu_score("zebra", "apple") < 1e-9
    # with several references, clipped counts use the max over references: the second one matches fully
    assert M.bleu_score("i like red apples", ["cats", "i like red apples"]) == pytest.approx(1.0)


def test_bleu_articles_and_punctuation_ignored():
    assert M.bleu_score("The cat, the hat.", "cat hat") == pytest.approx(
        M.bleu_score("cat hat", "cat hat"))


# --- ranks -------------------------------------------------------------------------------------------
def test_rank_of_gold_and_ties():
    assert M.rank_of_gold([0.1, 0.9, 0.5], gold_index=1) == 1
    assert M.rank_of_gold([0.1, 0.9, 0.5], gold_index=0) == 3
    assert M.rank_of_gold([0.1, 0.9, 0.5], gold_index=-1) == 2
    # ties count in the gold's favour: only strictly greater scores push it down
    assert M.rank_of_gold([0.5, 0.7, 0.5, 0.5], gold_index=3) == 2
    assert M.rank_of_gold([2.0] * 20, gold_index=19) == 1


def test_rank_of_gold_accepts_tensors():
    import torch

    scores = torch.tensor([0.5, 0.9, 0.1], dtype=torch.bfloat16)
    assert M.rank_of_gold(scores, gold_index=2) == 3


def test_rank_of_gold_bad_input():
    with pytest.raises(IndexError, match="gold_index 3"):
        M.rank_of_gold([1.0, 2.0], gold_index=3)
    with pytest.raises(ValueError, match="NaN"):
        M.rank_of_gold([1.0, float("nan")], gold_index=0)
    with pytest.raises(ValueError, match="empty"):
        M.rank_of_gold([], gold_index=0)


def test_hits_at_k():
    assert M.hits_at_k(1, 1) == 1.0
    assert M.hits_at_k(2, 1) == 0.0
    assert M.hits_at_k([1, 2, 3, 20], 1) == 0.25
    assert M.hits_at_k([1, 2, 3, 20], 3) == 0.75


def test_mrr():
    assert M.mrr(4) == 0.25
    assert M.mrr([1, 2, 4]) == pytest.approx((1 + 0.5 + 0.25) / 3)


@pytest.mark.parametrize("bad", [[0], [1, -2], [1.5], []])
def test_rank_metrics_reject_bad_ranks(bad):
    with pytest.raises(ValueError):
        M.mrr(bad)
    with pytest.raises(ValueError):
        M.hits_at_k(bad, 1)


# --- perplexity --------------------------------------------------------------------------------------
def test_perplexity():
    assert M.perplexity(0.0, 5) == 1.0
    assert M.perplexity(10 * math.log(4), 10) == pytest.approx(4.0)   # mean nll ln 4 -> ppl 4
    assert M.perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="n_tokens"):
        M.perplexity(1.0, 0)


# --- distinct-n --------------------------------------------------------------------------------------
def test_distinct_n():
    texts = ["I like cats", "i like dogs"]
    # unigrams: i like cats i like dogs -> distinct {i, like, cats, dogs} = 4 of 6
    assert M.distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (i like) (like cats) (i like) (like dogs) -> 3 distinct of 4
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert M.distinct_n(["one"], 2) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        M.distinct_n(texts, 0)


# --- uncertainty -------------------------------------------------------------------------------------
def test_mean_and_stderr():
    mean, se = M.mean_and_stderr([1.0, 2.0, 3.0, 4.0])
    # sample variance = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; se = sqrt(5/3) / 2
    assert mean == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)
    mean, se = M.mean_and_stderr([7.0])
    assert mean == 7.0 and math.isnan(se)


def test_bootstrap_ci():
    assert M.bootstrap_ci([3.0] * 10) == (3.0, 3.0)               # constant data: no spread
    values = [0.0, 1.0] * 50
    low, high = M.bootstrap_ci(values, n=500, seed=1)
    assert low < 0.5 < high and high - low < 0.3                   # se = 0.05 -> width ~ 0.2
    assert M.bootstrap_ci(values, n=500, seed=1) == (low, high)    # seeded: reproducible
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci(values, alpha=1.5)
    with pytest.raises(ValueError, match="empty"):
        M.bootstrap_ci([])


def test_paired_perplexity_difference_hand_example_and_error():
    # a: turns of 2 tokens with nll 2 and 4 -> exp(6 / 4); b: nll 1 and 3 -> exp(4 / 4)
    diff, se = M.paired_perplexity_difference([2.0, 4.0], [2, 2], [1.0, 3.0], [2, 2], reps=200, seed=3)
    assert diff == pytest.approx(math.exp(1.5) - math.e)
    back, se_back = M.paired_perplexity_difference([1.0, 3.0], [2, 2], [2.0, 4.0], [2, 2], reps=200, seed=3)
    assert back == pytest.approx(-diff) and se_back == pytest.approx(se)   # the same draws: a symmetric error
    # identical turns: every resample gives the same corpus ppl, so the difference has no error at all
    diff, se = M.paired_perplexity_difference([1.0] * 5, [1] * 5, [0.5] * 5, [1] * 5)
    assert diff == pytest.approx(math.e - math.exp(0.5)) and se == pytest.approx(0.0, abs=1e-12)
    # one token per turn: ppl = exp(mean nll), and the delta method gives the error of the difference,
    # sqrt(var(e^mean(x) x_i - e^mean(y) y_i) / N); the bootstrap agrees with it within a few per cent
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 0.5, 400)
    y = x - 0.2 + rng.normal(0.0, 0.3, 400)   # paired: y follows x turn by turn
    diff, se = M.paired_perplexity_difference(x, [1] * 400, y, [1] * 400, reps=4000, seed=1)
    delta = (math.exp(x.mean()) * x - math.exp(y.mean()) * y).std(ddof=1) / math.sqrt(400)
    assert diff == pytest.approx(math.exp(x.mean()) - math.exp(y.mean()))
    assert se == pytest.approx(delta, rel=0.08)
    unpaired = math.sqrt(((math.exp(x.mean()) * x).var(ddof=1) + (math.exp(y.mean()) * y).var(ddof=1)) / 400)
    assert se < unpaired / 2   # pairing removes the turns' shared difficulty


@pytest.mark.parametrize("args, match", [
    (([1.0, 2.0], [1, 1], [1.0], [1]), "equally long"),
    (([], [], [], []), "equally long"),
    (([1.0], [0], [1.0], [1]), "token count"),
])
def test_paired_perplexity_difference_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        M.paired_perplexity_difference(*args)

