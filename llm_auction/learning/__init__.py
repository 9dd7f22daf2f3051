"""The learning loop as a library: Algorithm 1 of the paper run through the real pipeline.

Above the services (consumers), the trainer and the producers, below the CLI: ``embedded`` stands
the one-process pipeline up (world, model, broker, warehouse, services on threads), ``loop`` runs
the epochs on it. ``llm-auction loop`` and ``llm-auction demo`` only parse their flags and call
:func:`llm_auction.learning.loop.run`.
"""
