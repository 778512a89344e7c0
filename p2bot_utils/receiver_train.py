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
