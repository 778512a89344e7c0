"""P²Bot reproduction: "You Impress Me: Dialogue Generation via Mutual Persona Perception" (Liu et al., ACL 2020).

Flat, small modules; the notebooks in ``notebooks/`` narrate and call them. Imports run one way:
episodes / metrics / profile → data (data_files, data_split, data, ir, sides) → models (backbones,
lm_likelihood, transmitter, decoding, receiver) → training (checkpoints, training, transmitter_train,
receiver_train) → self-play (rewards, selfplay, selfplay_train, selfplay_eval) → evaluation
(transmitter_eval, probing, human_eval) → tables / plots / bench → cli. The README's layout says what each
module holds; ``tests/test_house.py`` keeps the order (no circles, no module over 400 lines).
"""

__version__ = "0.1.0"
