"""P²Bot reproduction: "You Impress Me: Dialogue Generation via Mutual Persona Perception" (Liu et al., ACL 2020).

Flat, small modules; the notebooks in ``notebooks/`` narrate and call them:

- ``data``        PERSONA-CHAT / ConvAI2 readers, splits, candidates, persona pool (no model code)
- ``metrics``     ParlAI-exact F1 / BLEU / Hits@k / MRR / perplexity (imports nothing of the project)
- ``profile``     profile parameters, output folders, seeding, manifests, atomic writes
- ``backbones``   model name -> (model, tokenizer), offline packages, tiny models for ``smoke``
- ``training``    the accelerate training loop shared by the Transmitter and the Receiver
- ``transmitter`` / ``receiver`` / ``selfplay``  the three parts of the method
"""

__version__ = "0.1.0"
