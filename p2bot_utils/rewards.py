"""Self-play rewards of P²Bot (paper Sec. 3.3, Eq. 6-10), each a small function tested on its own.

For every utterance a^B_n of the learner B in a self-play dialogue x^A_1, a^B_1, x^A_2, a^B_2, ..., the
reward is R = λ1·R1 + λ2·R2 + λ3·R3 (Eq. 10):

- R1 language style (Eq. 6): length-normalised log-likelihood of a^B_n under a frozen pretrained LM;
- R2 discourse coherence (Eq. 7): log p(y=1 | s^B_n, a^B_n) from the NUP head of the frozen supervised
  Transmitter;
- R3 mutual persona perception (Eq. 8-9): the Receiver's score of a^B_n against B's persona plus the
  γ-discounted scores of every later utterance of both speakers against their own persona.

Functions here take tensors / models and return tensors; none keeps state. ``compute_rewards`` applies them to
a self-play rollout. The authors' released code
differs in a few places; each difference is a named option (``coherence_mode="prob_minus_half"``,
``normalisation="minmax"``, ``CODE_WEIGHTS``, ``repetition_penalty``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from p2bot_utils.lm_likelihood import utterance_log_likelihood
from p2bot_utils.profile import timed_phase
from p2bot_utils.receiver import score_utterances
from p2bot_utils.transmitter import nup_log_prob

REWARD_NAMES = ("r1", "r2", "r3")
PAPER_WEIGHTS = {"r1": 0.4, "r2": 0.1, "r3": 0.5}  # λ1, λ2, λ3 of Eq. 10 (paper Sec. 5.1)
CODE_WEIGHTS = {"r1": 0.5, "r2": 0.1, "r3": 0.5}  # the released code's worlds/selfplay.py
# Table 3 variants: which reward terms are switched on.
VARIANTS = {"rs1": ("r1",), "rs1_rs2": ("r1", "r2"), "p2bot": ("r1", "r2", "r3")}
COHERENCE_MODES = ("log_prob", "prob_minus_half")
PERSONA_NORMALISATIONS = ("none", "minmax")


# --- R1: language style (Eq. 6) ---------------------------------------------------------------------
def language_style_reward(lm, tokenizer, utterances: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Eq. 6: R1(a^B_n) = (1/|a^B_n|) log p_LM(a^B_n) under the frozen pretrained LM. Returns (N,)."""
    chunks = [utterance_log_likelihood(lm, tokenizer, utterances[i : i + batch_size])
              for i in range(0, len(utterances), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0)


# --- R2: discourse coherence (Eq. 7) ----------------------------------------------------------------
def discourse_coherence_reward(nup_log_p: torch.Tensor, mode: str = "log_prob") -> torch.Tensor:
    """Eq. 7: R2(a^B_n) = log p(y=1 | s^B_n, a^B_n) from the NUP head of the frozen supervised Transmitter.

    ``mode="prob_minus_half"`` is the released code's choice: p(y=1) − 0.5. ``nup_log_p`` is any shape.
    """
    if mode not in COHERENCE_MODES:
        raise ValueError(f"rewards.discourse_coherence_reward: mode={mode!r}, want one of {COHERENCE_MODES}")
    return nup_log_p if mode == "log_prob" else nup_log_p.exp() - 0.5


# --- R3: mutual persona perception (Eq. 8-9) ----------------------------------------------------------
def mutual_persona_reward(r_user: torch.Tensor, r_agent: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """Eq. 8-9: R3(a^B_n) = r(a^B_n) + Σ_{k=n+1..N} ( γ^{2(k−n)−1} r(x^A_k) + γ^{2(k−n)} r(a^B_k) ).

    ``r_user[:, k]`` = r(x^A_{k+1}) and ``r_agent[:, k]`` = r(a^B_{k+1}) (Eq. 9: the Receiver's score of an
    utterance against its own speaker's persona), both (B, N); the dialogue is x^A_1, a^B_1, ..., x^A_N,
    a^B_N, so r(x^A_1) never enters. Computed as the discounted return G_t = s_t + γ·G_{t+1} over the
    interleaved sequence, read at B's positions. Returns (B, N).
    """
    if r_user.shape != r_agent.shape or r_user.dim() != 2:
        raise ValueError(f"rewards.mutual_persona_reward: r_user {tuple(r_user.shape)} and r_agent "
                         f"{tuple(r_agent.shape)} must both be (batch, turns)")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"rewards.mutual_persona_reward: gamma={gamma} must lie in [0, 1]")
    out = torch.zeros_like(r_agent)  # (B, N)
    future = torch.zeros_like(r_agent[:, 0])  # (B,) G at x^A_{n+1}
    for n in reversed(range(r_agent.shape[1])):
        out[:, n] = r_agent[:, n] + gamma * future  # G(a^B_n)
        future = r_user[:, n] + gamma * out[:, n]  # G(x^A_n)
    return out


def normalise_persona_reward(r3: torch.Tensor, normalisation: str = "none") -> torch.Tensor:
    """Optional rescaling of R3. ``"minmax"`` is the released code's 2·(R3 − min)/(max − min) over the batch."""
    if normalisation not in PERSONA_NORMALISATIONS:
        raise ValueError(f"rewards.normalise_persona_reward: normalisation={normalisation!r}, want one of "
                         f"{PERSONA_NORMALISATIONS}")
    if normalisation == "none":
        return r3
    return 2 * (r3 - r3.min()) / (r3.max() - r3.min() + 1e-6)


# --- the released code's extra: repetition ("information flow") penalty --------------------------------
def repetition_penalty(embeddings: torch.Tensor) -> torch.Tensor:
    """Max cosine similarity of each utterance embedding to any EARLIER one of the same dialogue (0 for the
    first); the released code subtracts 0.1× this (not in the paper). ``embeddings`` (B, T, D) -> (B, T)."""
    if embeddings.dim() != 3:
        raise ValueError(f"rewards.repetition_penalty: embeddings must be (batch, utterances, dim), got "
                         f"{tuple(embeddings.shape)}")
    unit = F.normalize(embeddings.float(), dim=-1)  # (B, T, D)
    sim = unit @ unit.transpose(1, 2)  # (B, T, T)
    earlier = torch.ones(sim.shape[1:], dtype=torch.bool, device=sim.device).tril(-1)  # (T, T) j < t
    sim = sim.masked_fill(~earlier, float("-inf"))
    return sim.max(-1).values.clamp(min=0.0).nan_to_num(0.0, neginf=0.0)  # (B, T)


# --- R: the weighted sum (Eq. 10) ---------------------------------------------------------------------
def total_reward(components: Mapping[str, torch.Tensor], weights: Mapping[str, float],
                 enabled: Sequence[str]) -> torch.Tensor:
    """Eq. 10: R = λ1·R1 + λ2·R2 + λ3·R3, summed over the ``enabled`` terms only (a switched-off term
    contributes nothing and need not be computed). Extra terms (e.g. ``"penalty"``) add with their weight."""
    if not enabled:
        raise ValueError("rewards.total_reward: enabled is empty; switch on at least one reward term")
    missing = [k for k in enabled if k not in components or k not in weights]
    if missing:
        raise ValueError(f"rewards.total_reward: enabled terms {missing} have no component or no weight")
    return sum(weights[k] * components[k] for k in enabled)


# --- the rewards of one self-play rollout (a ``selfplay.Rollout``) ----------------------------------
@dataclass
class RewardModels:
    """The frozen judges: R1's pretrained LM (+ tokenizer), R2's supervised Transmitter (NUP head), R3's
    Receiver. Any may be None when its term is neither used nor logged."""

    lm: nn.Module | None = None
    lm_tokenizer: object = None
    coherence: nn.Module | None = None
    receiver: nn.Module | None = None

    def frozen(self) -> "RewardModels":
        for m in (self.lm, self.coherence, self.receiver):
            if m is not None:
                m.eval().requires_grad_(False)
        return self


def flatten(rows: list[list]) -> list:
    return [x for row in rows for x in row]


def _wanted(config, models: RewardModels) -> list[str]:
    have = {"r1": models.lm is not None, "r2": models.coherence is not None, "r3": models.receiver is not None}
    missing = [k for k in config.rewards if not have[k]]
    if missing:
        raise ValueError(f"rewards.compute_rewards: reward terms {missing} are on but their model is None")
    return [k for k in REWARD_NAMES if k in config.rewards or (config.log_all_rewards and have[k])]


@timed_phase("rewards")
def compute_rewards(ro, models: RewardModels, config) -> dict[str, torch.Tensor]:
    """Every reward term of every a^B_n of a rollout ``ro`` under a ``SelfPlayConfig`` -> dict of (B, N)
    tensors: the wanted ``r1``/``r2``/``r3``, the optional ``penalty``, and ``reward`` = Eq. 10 over the
    enabled terms (minus the penalty)."""
    B, N = len(ro.agent), config.n_turns
    replies, comps = flatten(ro.agent), {}
    for name in _wanted(config, models):
        if name == "r1":  # Eq. 6
            comps["r1"] = language_style_reward(models.lm, models.lm_tokenizer, replies)
        elif name == "r2":  # Eq. 7
            contexts = [ro.agent_context(i, n) for i in range(B) for n in range(N)]
            personas = [p for p in ro.personas_b for _ in range(N)]
            log_p = nup_log_prob(models.coherence, personas, contexts, replies)
            comps["r2"] = discourse_coherence_reward(log_p.float().cpu(), config.coherence_mode)
        else:  # Eq. 8-9
            r_user, r_agent = receiver_scores(ro, models.receiver)
            comps["r3"] = normalise_persona_reward(mutual_persona_reward(r_user, r_agent, config.gamma),
                                                   config.persona_normalisation)
    comps = {k: v.reshape(B, N).float().cpu() for k, v in comps.items()}
    comps["reward"] = total_reward(comps, config.weights, config.rewards)
    if config.repetition_penalty:
        comps["penalty"] = _repetition(ro, models.receiver)
        comps["reward"] = comps["reward"] - config.repetition_penalty * comps["penalty"]
    return comps


def receiver_scores(ro, receiver) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: r(x) of every utterance against its own speaker's persona -> r_user, r_agent, both (B, N)."""
    B, N = len(ro.agent), len(ro.agent[0])
    r_user = score_utterances(receiver, flatten(ro.user), [p for p in ro.personas_a for _ in range(N)])
    r_agent = score_utterances(receiver, flatten(ro.agent), [p for p in ro.personas_b for _ in range(N)])
    return r_user.float().cpu().reshape(B, N), r_agent.float().cpu().reshape(B, N)


def _repetition(ro, receiver) -> torch.Tensor:
    """The code's penalty on B's turns: max cosine of a^B_n's impression embedding to any earlier utterance."""
    if receiver is None:
        raise ValueError("SelfPlayConfig.repetition_penalty > 0 needs the Receiver (its impression encoder)")
    B, N = len(ro.agent), len(ro.agent[0])
    seq = [u for i in range(B) for n in range(N) for u in (ro.user[i][n], ro.agent[i][n])]
    with torch.no_grad():
        emb = receiver.encode_texts(seq, "impression").reshape(B, 2 * N, -1)  # (B, 2N, d)
    return repetition_penalty(emb)[:, 1::2].cpu()  # (B, N): B's positions
