"""Training the Receiver (paper Sec. 4, Eq. 12) with the shared loop of ``training``.

The triples come from ``sides.build_examples``; the model and its loss from ``receiver``.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

from p2bot_utils.receiver import Receiver, ReceiverConfig, collate_examples, receiver_loss
from p2bot_utils.sides import ReceiverExample
from p2bot_utils.training import train


def _loss_fn(model, batch: dict, progress: float, config: ReceiverConfig) -> dict:
    return receiver_loss(model(batch), config, progress)


def train_receiver(receiver: Receiver, examples: Sequence[ReceiverExample], train_config, **kw):
    """Eq. 12 with the shared loop (``training.train``: accelerate, checkpoints, resume, CSV log of
    loss / hinge / l1 / margin_acc / tau). Returns its ``TrainResult``; saving the model is the caller's."""
    collate = partial(collate_examples, tokenizer=receiver.tokenizer, max_length=receiver.config.max_length)
    return train(receiver.train(), list(examples), collate, partial(_loss_fn, config=receiver.config),
                 train_config, **kw)


def receiver_config_from_params(params: dict) -> ReceiverConfig:
    """The ``ReceiverConfig`` of a profile's ``receiver_*`` keys (notebook 02).

    ``receiver_released_code: true`` applies EVERY released-code choice of ``ReceiverConfig.released_code``
    (shared encoder, sum over utterances, hard max, m = 0.5, beta = 1e-2, combination distractors): the
    paper-valued keys ``receiver_margin``, ``receiver_l1_beta`` and ``receiver_distractor`` are then not passed,
    since they would override 0.5 / 1e-2 / combination. Backbone, length, tau and trained layers always apply."""
    common = dict(backbone=params["receiver_backbone"], max_length=params["receiver_max_length"],
                  tau_start=params["receiver_tau_start"], tau_end=params["receiver_tau_end"],
                  score_tau=params["receiver_tau_end"], train_layers=params["receiver_train_layers"])
    if params["receiver_released_code"]:
        return ReceiverConfig.released_code(**common)
    return ReceiverConfig(**common, margin=params["receiver_margin"], l1_beta=params["receiver_l1_beta"],
                          distractor=params["receiver_distractor"])
