"""Speculative decoding on the device (GELATO): ``draft`` (the draft model's token stream),
``policies`` (how many tokens to draft per round: gelato and the baselines), ``gelato`` (the
controller's pure math), ``generate`` (the generation loop against an edge, with energy),
``round_account`` (how a round is counted, by that loop and by the simulators alike),
``report`` (the generation's report and its human-readable summary) and ``gemma`` (the demo's
real model pair)."""
