"""Self-play fine-tuning of the Transmitter with mutual persona perception rewards (Sec. 3.2-3.3, Eq. 4-10).

Two Transmitters talk: A (the user, a frozen copy of the supervised Transmitter) opens with an utterance
taken from the data, then B (the learner, initialised from the same Transmitter) and A alternate for N
turns: x^A_1, a^B_1, x^A_2, a^B_2, ..., x^A_N, a^B_N. B samples its replies token by token; A decodes
with beam search (or greedily). Each a^B_n earns R = λ1·R1 + λ2·R2 + λ3·R3 (Eq. 10, ``rewards.py``) and B
is updated with REINFORCE (Eq. 4-5) against the mean reward of the mini-batch. Only B's parameters move.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from p2bot_utils import rewards as rw
from p2bot_utils import decoding as dec
from p2bot_utils.episodes import SILENCE
from p2bot_utils.metrics import distinct_n
from p2bot_utils.profile import timed_phase
from p2bot_utils.rewards import RewardModels, compute_rewards, flatten

LOG_FIELDS = ("step", "dialogues", "r1", "r2", "r3", "penalty", "reward", "baseline", "loss", "response_len",
              "distinct_1", "distinct_2", "logp_gap")


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class SelfPlayConfig:
    """Self-play REINFORCE (Sec. 3.2-3.3, Sec. 5.1). Paper values are the defaults; the released code's
    choices are named options (noted ``code:``)."""

    # --- budget and rollout ---
    n_dialogues: int = _help("self-play dialogues in total (paper: 2000)", 2000)
    batch_size: int = _help("dialogues per update, the mini-batch of the baseline (paper: not stated; code: 6)", 6)
    n_turns: int = _help("N: utterances of B per dialogue (paper: 3)", 3)
    max_new_tokens: int = _help("longest sampled reply of B, in tokens (paper: 32)", 32)
    temperature: float = _help("B's sampling temperature; the loss uses the same distribution", 1.0)
    top_k: int = _help("B samples from the top-k tokens (0 = the full distribution, paper)", 0)
    user_decoding: str = _help("A's decoding: 'beam' (size user_beam_size) or 'greedy'", "beam")
    user_beam_size: int = _help("A's beam size (paper: 2)", 2)
    user_shares_weights: bool = _help("code: A is the learner itself (paper: a frozen copy)", False)
    repeat_pair: bool = _help("code: one persona pair + opening per batch, sampled batch_size times", False)
    # --- rewards (Eq. 6-10) ---
    rewards: tuple[str, ...] = _help("reward terms switched on (Table 3: rs1, rs1_rs2, p2bot)", ("r1", "r2", "r3"))
    weights: dict = _help("λ of Eq. 10 (paper 0.4/0.1/0.5; code 0.5/0.1/0.5)", None)
    gamma: float = _help("γ of Eq. 8 (paper: 0.5)", 0.5)
    coherence_mode: str = _help("R2: 'log_prob' (Eq. 7) or code's 'prob_minus_half'", "log_prob")
    persona_normalisation: str = _help("R3 rescaling: 'none' (paper) or code's 'minmax'", "none")
    repetition_penalty: float = _help("code: weight of the max-cosine repetition penalty (paper: 0)", 0.0)
    log_all_rewards: bool = _help("compute switched-off terms for the log too (they never enter R)", True)
    # --- REINFORCE (Eq. 4-5) ---
    baseline: str = _help("'batch_mean' (paper: mean reward of the mini-batch) or code's 'turn_mean'", "batch_mean")
    log_prob: str = _help("log p(a|s): 'sum' over tokens (Eq. 5) or code's length-normalised 'mean'", "sum")
    lr: float = _help("Adam learning rate (paper: 1e-6)", 1e-6)
    max_grad_norm: float = _help("gradient clipping (0 = off; paper: not stated)", 0.0)
    trainable_layers: int = _help("CPU budget: train only B's top k blocks + final norm (0 = all, paper)", 0)
    # --- bookkeeping ---
    seed: int = _help("seeds persona pairs, openings and sampling per step (resume-exact)", 0)
    save_every: int = _help("checkpoint every k updates under out_dir/checkpoint (0 = never)", 0)
    out_dir: str = _help("folder for checkpoints", "")
    log_csv: str = _help("per-update log (one row per REINFORCE step)", "")

    def __post_init__(self) -> None:
        self.rewards, self.weights = tuple(self.rewards), dict(self.weights or rw.PAPER_WEIGHTS)
        choices = {"user_decoding": ("beam", "greedy"), "coherence_mode": rw.COHERENCE_MODES,
                   "persona_normalisation": rw.PERSONA_NORMALISATIONS, "baseline": ("batch_mean", "turn_mean"),
                   "log_prob": ("sum", "mean")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"SelfPlayConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("n_dialogues", "batch_size", "n_turns", "max_new_tokens", "user_beam_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SelfPlayConfig.{name}={getattr(self, name)}: must be >= 1")
        if not self.rewards or set(self.rewards) - set(rw.REWARD_NAMES):
            raise ValueError(f"SelfPlayConfig.rewards={self.rewards}: a non-empty subset of {rw.REWARD_NAMES}")
        if self.temperature <= 0 or self.top_k < 0 or self.lr <= 0 or self.max_grad_norm < 0 or self.trainable_layers < 0:
            raise ValueError("SelfPlayConfig: temperature and lr must be > 0; top_k, max_grad_norm and "
                             "trainable_layers >= 0")
        if self.save_every and not self.out_dir:
            raise ValueError("SelfPlayConfig.save_every > 0 needs out_dir for the checkpoints")

    @classmethod
    def variant(cls, name: str, **overrides) -> "SelfPlayConfig":
        """A Table 3 variant: ``rs1`` (+RS.1), ``rs1_rs2`` (+RS.1+RS.2), ``p2bot`` (+RS.1+RS.2+RS.3)."""
        if name not in rw.VARIANTS:
            raise ValueError(f"SelfPlayConfig.variant: unknown variant {name!r}; known: {list(rw.VARIANTS)}")
        return cls(rewards=rw.VARIANTS[name], **overrides)

    @classmethod
    def released_code(cls, **overrides) -> "SelfPlayConfig":
        """The authors' code (train_psquare.py, worlds/selfplay.py): shared user, one pair per batch, top-20
        sampling, weights 0.5/0.1/0.5, p − 0.5, min-max R3, repetition penalty, per-turn baseline,
        length-normalised log-probability, clipping at 1.0."""
        code = dict(user_shares_weights=True, repeat_pair=True, weights=dict(rw.CODE_WEIGHTS), top_k=20,
                    max_grad_norm=1.0, **REWARD_PRESETS["released_code"])
        return cls(**{**code, **overrides})

    @classmethod
    def from_params(cls, params: dict, variant: str, **overrides) -> "SelfPlayConfig":
        """A Table 3 variant from a profile's ``selfplay_*`` keys (and ``seed``): the budget and rollout keys,
        λ (``selfplay_reward_weights``, Eq. 10), γ (``selfplay_gamma``, Eq. 8) and ``selfplay_reward_preset``
        (``paper`` | ``released_code``: how R2, R3, the baseline and log p(a|s) are computed)."""
        p = {k[len("selfplay_"):]: v for k, v in params.items() if k.startswith("selfplay_")}
        preset = p.get("reward_preset", "paper")
        if preset not in REWARD_PRESETS:
            raise ValueError(f"selfplay_reward_preset={preset!r}: expected one of {sorted(REWARD_PRESETS)}")
        lam = p.get("reward_weights", list(rw.PAPER_WEIGHTS.values()))
        if not isinstance(lam, (list, tuple)) or len(lam) != len(rw.REWARD_NAMES):
            raise ValueError(f"selfplay_reward_weights={lam!r}: expected three numbers λ1, λ2, λ3 (Eq. 10)")
        keys = ("n_dialogues", "batch_size", "n_turns", "max_new_tokens", "temperature", "top_k", "user_decoding",
                "user_shares_weights", "lr", "max_grad_norm", "trainable_layers", "gamma")
        base = {k: p[k] for k in keys if k in p} | dict(
            weights=dict(zip(rw.REWARD_NAMES, map(float, lam))), seed=params.get("seed", 0),
            **REWARD_PRESETS[preset])
        return cls.variant(variant, **{**base, **overrides})


# The reward and estimator choices that differ between the paper and the released code (profile key
# selfplay_reward_preset); λ, γ, sampling and clipping are keys of their own.
REWARD_PRESETS = {
    "paper": dict(coherence_mode="log_prob", persona_normalisation="none", repetition_penalty=0.0,
                  baseline="batch_mean", log_prob="sum"),
    "released_code": dict(coherence_mode="prob_minus_half", persona_normalisation="minmax", repetition_penalty=0.1,
                          baseline="turn_mean", log_prob="mean"),
}


# --- inputs: persona pairs and openings ------------------------------------------------------------------
def draw_persona_pairs(pool: Sequence, n: int, rng: random.Random) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """n (persona_A, persona_B) pairs from the persona pool, A and B from different persona groups."""
    if len({e.group for e in pool}) < 2:
        raise ValueError(f"selfplay.draw_persona_pairs: the persona pool needs >= 2 groups, has {len(pool)} entries")
    pairs = []
    while len(pairs) < n:
        a, b = rng.sample(range(len(pool)), 2)
        if pool[a].group != pool[b].group:
            pairs.append((tuple(pool[a].sentences), tuple(pool[b].sentences)))
    return pairs


def opening_utterances(episodes: Sequence) -> list[str]:
    """A's first utterance x^A_1 from the data: each episode's first partner turn, or its first reply when
    the episode's own speaker opened (partner = __SILENCE__). Duplicates removed, order kept."""
    out = []
    for ep in episodes:
        if ep.turns:
            first = ep.turns[0]
            out.append(first.reply if first.partner.strip() == SILENCE else first.partner)
    out = list(dict.fromkeys(t for t in out if t.strip()))
    if not out:
        raise ValueError("selfplay.opening_utterances: no episode has a non-empty first utterance")
    return out


# --- rollouts ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One batch of self-play dialogues x^A_1, a^B_1, ..., x^A_N, a^B_N (lists indexed [dialogue][turn])."""

    personas_a: list[tuple[str, ...]]
    personas_b: list[tuple[str, ...]]
    user: list[list[str]]  # x^A_1..x^A_N
    agent: list[list[str]]  # a^B_1..a^B_N
    agent_ids: list[list[list[int]]]  # token ids of each a^B_n (end token included when sampled)
    sampled_log_probs: torch.Tensor  # (B, N) log p(a^B_n | s^B_n) of the distribution sampled from
    reply_tokens: torch.Tensor  # (B, N) tokens of each a^B_n, end token not counted

    def agent_context(self, i: int, n: int) -> list[str]:
        """s^B_n of dialogue i (0-based turn n): x^A_1, a^B_1, ..., x^A_n."""
        return [u for k in range(n) for u in (self.user[i][k], self.agent[i][k])] + [self.user[i][n]]

    def transcript(self, i: int) -> str:
        lines = [f"A persona: {' '.join(self.personas_a[i])}", f"B persona: {' '.join(self.personas_b[i])}"]
        for x, a in zip(self.user[i], self.agent[i]):
            lines += [f"  A: {x}", f"  B: {a}"]
        return "\n".join(lines)


@torch.no_grad()
@timed_phase("self-play rollouts")
def rollout(learner: nn.Module, user: nn.Module, personas_a, personas_b, openings: Sequence[str],
            config: SelfPlayConfig, agent_greedy: bool = False) -> Rollout:
    """Play ``len(openings)`` dialogues in one batch: B samples (Sec. 3.2; ``agent_greedy`` for showing
    transcripts), A answers with beam search / greedy. Returns the dialogue and B's sampling log-probs."""
    B, N = len(openings), config.n_turns
    ro = Rollout(list(personas_a), list(personas_b), [[o] for o in openings], [[] for _ in range(B)],
                 [[] for _ in range(B)], torch.zeros(B, N), torch.zeros(B, N))
    for n in range(N):
        contexts = [ro.agent_context(i, n) for i in range(B)]
        texts, ids, logps, lengths = _agent_replies(learner, ro.personas_b, contexts, config, agent_greedy)
        ro.sampled_log_probs[:, n], ro.reply_tokens[:, n] = logps, lengths
        for i in range(B):
            ro.agent[i].append(texts[i])
            ro.agent_ids[i].append(ids[i])
        if n + 1 < N:
            hist_a = [ro.agent_context(i, n) + [ro.agent[i][n]] for i in range(B)]
            for i, x in enumerate(_user_replies(user, ro.personas_a, hist_a, config)):
                ro.user[i].append(x)
    return ro


def _agent_replies(learner, personas, contexts, config: SelfPlayConfig, greedy: bool):
    """B's replies: sampled (temperature / top-k) with the log-probs of that very distribution, or greedy.
    Returns texts, token ids, (B,) log p(a|s) and (B,) reply lengths in tokens (without the end token)."""
    if greedy:
        texts = dec.generate_replies(learner, personas, contexts, num_beams=1, max_new_tokens=config.max_new_tokens)
        lengths = [len(learner.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        return texts, [[] for _ in texts], torch.zeros(len(texts)), torch.tensor(lengths, dtype=torch.float)
    out = dec.sample_replies(learner, personas, contexts, max_new_tokens=config.max_new_tokens,
                            temperature=config.temperature, top_k=config.top_k)
    clf = learner.ids.clf
    lengths = torch.tensor([len(r) - (1 if r and r[-1] == clf else 0) for r in out.token_ids], dtype=torch.float)
    return out.texts, out.token_ids, _reduce_log_probs(out.log_probs, config.log_prob).cpu(), lengths


def _reduce_log_probs(per_token: Sequence[torch.Tensor], reduce: str) -> torch.Tensor:
    """Per-token log-probs of each reply -> (B,) log p(a|s): the sum (Eq. 5) or the code's per-token mean."""
    if reduce == "sum":
        return torch.stack([lp.sum() for lp in per_token])
    return torch.stack([lp.sum() / max(1, lp.numel()) for lp in per_token])


def _user_replies(user, personas, histories, config: SelfPlayConfig) -> list[str]:
    """A's replies: beam search of size ``user_beam_size`` (Eq. 3 re-ranking inside) or greedy decoding."""
    beam = config.user_beam_size if config.user_decoding == "beam" else 1
    return dec.generate_replies(user, personas, histories, num_beams=beam, max_new_tokens=config.max_new_tokens)


# --- REINFORCE (Eq. 4-5) ------------------------------------------------------------------------------------
def reward_baseline(reward: torch.Tensor, mode: str = "batch_mean") -> torch.Tensor:
    """b of Eq. 5: the mean reward of the mini-batch (a scalar), or the code's per-turn mean (1, N)."""
    if mode == "batch_mean":
        return reward.mean()
    if mode == "turn_mean":
        return reward.mean(0, keepdim=True)
    raise ValueError(f"selfplay.reward_baseline: mode={mode!r}, want 'batch_mean' or 'turn_mean'")


def reinforce_loss(log_probs: torch.Tensor, reward: torch.Tensor, baseline: str = "batch_mean"):
    """Eq. 4-5: L(θ) = −Σ_n (R(a^B_n) − b) · log pθ(a^B_n | s^B_n), summed over B's turns and averaged over
    the dialogues of the batch. ``log_probs`` (B, N) carries the gradient; returns (loss, b)."""
    if log_probs.shape != reward.shape:
        raise ValueError(f"selfplay.reinforce_loss: log_probs {tuple(log_probs.shape)} vs reward {tuple(reward.shape)}")
    b = reward_baseline(reward, baseline)
    advantage = (reward - b).detach().to(log_probs.device)  # (B, N)
    return -(advantage * log_probs).sum(1).mean(), b


def agent_log_probs(learner, ro: Rollout, config: SelfPlayConfig) -> torch.Tensor:
    """log pθ(a^B_n | s^B_n) of every sampled reply under the SAME temperature / top-k, with gradient -> (B, N)."""
    B, N = len(ro.agent), config.n_turns
    contexts = [ro.agent_context(i, n) for i in range(B) for n in range(N)]
    personas = [p for p in ro.personas_b for _ in range(N)]
    per_token = dec.sequence_log_probs(learner, personas, contexts, flatten(ro.agent_ids),
                                      temperature=config.temperature, top_k=config.top_k)
    return _reduce_log_probs(per_token, config.log_prob).reshape(B, N)


# --- the loop --------------------------------------------------------------------------------------------
def make_players(supervised: nn.Module, config: SelfPlayConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(learner B, user A, frozen): B is a trainable copy of the supervised Transmitter; ``frozen`` is a
    never-changing copy that plays A (unless ``user_shares_weights``: A is B itself) and judges R2."""
    frozen = copy.deepcopy(supervised).eval().requires_grad_(False)
    learner = copy.deepcopy(supervised).eval().requires_grad_(True)
    if config.trainable_layers:
        train_top_layers(learner, config.trainable_layers)
    return learner, (learner if config.user_shares_weights else frozen), frozen


def train_top_layers(model: nn.Module, k: int) -> list[str]:
    """Freeze everything of a Transmitter but its top ``k`` transformer blocks and the final norm (the
    embedding / tied LM head and the NUP head stay frozen). Returns the trainable parameter names."""
    body = model.lm.base_model
    n_layers = model.lm.config.get_text_config().num_hidden_layers
    blocks = next((name for name, m in body.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers),
                  None)
    if blocks is None or not 0 < k <= n_layers:
        raise ValueError(f"selfplay.train_top_layers: k={k} for a backbone with {n_layers} blocks"
                         f"{'' if blocks else ' (no block list found)'}")
    top = tuple(f"{blocks}.{i}." for i in range(n_layers - k, n_layers))
    emb = {id(p) for p in (model.lm.get_input_embeddings().weight, model.lm.get_output_embeddings().weight)}
    model.requires_grad_(False)
    for name, p in body.named_parameters():
        in_blocks = name.startswith(f"{blocks}.")
        p.requires_grad_(name.startswith(top) or (not in_blocks and id(p) not in emb and p.dim() == 1))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def step_inputs(persona_pool, openings: Sequence[str], config: SelfPlayConfig, step: int):
    """Persona pairs and openings of update ``step``: a function of (seed, step) only, so a resumed run
    draws exactly what an uninterrupted one would."""
    rng = random.Random(config.seed * 1_000_003 + step)
    n = min(config.batch_size, config.n_dialogues - step * config.batch_size)
    if n < 1:
        raise ValueError(f"selfplay.step_inputs: step {step} is past n_dialogues={config.n_dialogues}")
    pairs = draw_persona_pairs(persona_pool, 1 if config.repeat_pair else n, rng)
    opens = [rng.choice(list(openings)) for _ in pairs]
    if config.repeat_pair:
        pairs, opens = pairs * n, opens * n
    return [a for a, _ in pairs], [b for _, b in pairs], opens


def _log_row(step: int, config: SelfPlayConfig, ro: Rollout, comps: dict, loss, b, logp) -> dict:
    row = {"step": step + 1, "dialogues": min((step + 1) * config.batch_size, config.n_dialogues)}
    for k in ("r1", "r2", "r3", "penalty", "reward"):
        row[k] = float(comps[k].mean()) if k in comps else ""
    row.update(baseline=float(b.mean()), loss=loss.item(),
               response_len=float(ro.reply_tokens.mean()),
               distinct_1=distinct_n(flatten(ro.agent), 1), distinct_2=distinct_n(flatten(ro.agent), 2),
               logp_gap=float((ro.sampled_log_probs - logp.detach().cpu()).abs().mean()))
    return row


@timed_phase("training")  # the REINFORCE update; its rollout and rewards count as their own phases
def selfplay_step(learner, user, models: RewardModels, optimizer, personas_a, personas_b, openings,
                  config: SelfPlayConfig, step: int = 0) -> tuple[dict, Rollout, dict]:
    """One REINFORCE update (Eq. 4-5) on a batch of fresh self-play dialogues -> (log row, rollout, rewards)."""
    ro = rollout(learner, user, personas_a, personas_b, openings, config)
    comps = compute_rewards(ro, models, config)
    logp = agent_log_probs(learner, ro, config)  # (B, N), with gradient
    loss, b = reinforce_loss(logp, comps["reward"], config.baseline)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm:
        nn.utils.clip_grad_norm_([p for p in learner.parameters() if p.requires_grad], config.max_grad_norm)
    optimizer.step()
    return _log_row(step, config, ro, comps, loss, b, logp), ro, comps
