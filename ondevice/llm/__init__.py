"""Speculative decoding on the device (GELATO): ``draft`` (the draft model's token stream),
``policies`` (how many tokens to draft per round: gelato and the baselines), ``gelato`` (the
controller's pure math), ``generate`` (the generation loop against an edge, with energy),
``report`` (its human-readable summary) and ``gemma`` (the demo's real model pair)."""
