"""Sampling seeds: the one range a user may pass, and the range an ``open`` frame carries.

No random generator of coinfer bounds a seed: both sides of a session draw from numpy's
``SeedSequence`` (``speculative.session_rng``), which takes any integer >= 0, and llama.cpp's
own samplers (whose seed is 32-bit) are not used. The bounds come from what carries a seed:

- ``MAX_SEED`` = 2**63-1 on every path a user passes one (``ondevice generate --seed``,
  ``Device.stream(seed=...)``, the ``seed`` of ``ondevice serve``'s OpenAI-compatible API):
  a signed 64-bit integer, what typed clients carry and OpenAI documents for its ``seed``.
- ``WIRE_MAX_SEED`` = 2**64-1 in an edge's ``open`` frame: msgpack's largest unsigned integer.
  A device that resumes a generation on another edge opens it with its seed plus the tokens
  it already has (``ondevice.llm.generate``), so the wire holds more than a user's range:
  MAX_SEED plus any token count (< 2**63) fits.
"""

from __future__ import annotations

MAX_SEED = 2**63 - 1
WIRE_MAX_SEED = 2**64 - 1


def seed_problem(seed: object, limit: int = MAX_SEED) -> str | None:
    """Why ``seed`` is not an integer in 0..``limit`` (bool is not one), or None.

    The message names the range ("0..2**63-1") and the value given."""
    if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= limit:
        return None
    return f"seed must be an integer in 0..{_power_text(limit)}, got {seed!r}"


def _power_text(limit: int) -> str:
    """``2**N-1`` for a limit of that form, else the number."""
    n = limit.bit_length()
    return f"2**{n}-1" if limit == 2**n - 1 else str(limit)
