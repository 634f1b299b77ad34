"""coinfer's device side: what runs on the Raspberry Pi or the Jetson.

Subpackages, one concept each:

- ``ondevice.common``: what the edge server and the export tools run too (wire format, llama.cpp
  runtime, rejection sampler, discovery record, DNN feature codec and profile). The only part of
  ``ondevice`` that ``edge_server`` and ``export`` may import.
- ``ondevice.edge``: reaching an edge: the client session, zeroconf discovery, a local
  ``edge-server`` child process.
- ``ondevice.llm``: speculative decoding (GELATO): the draft stream, the drafting policies and
  their math, the generation loop, its report.
- ``ondevice.dnn``: split DNN inference (ENACHI): the INT8 head on the device, progressive
  feature transmission, the controller's math and policies, a classification run.
- ``ondevice.cli``: the ``ondevice`` command, one module per command.
- ``ondevice.bench``: the benchmarks behind ``ondevice bench``.

- ``ondevice.serve``: ``ondevice serve``, an OpenAI-compatible HTTP service on the device.

The Python API: ``from ondevice import Device`` (``DeviceSync`` for code without asyncio);
see ``ondevice.llm.device`` and docs/api.md.

Importing ``ondevice`` loads nothing heavy (no llama.cpp, no onnxruntime): ``Device`` and
``DeviceSync`` are imported on first use (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ondevice.llm.device import Device, DeviceSync, Piece

__all__ = ["Device", "DeviceSync", "Piece"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ondevice.llm import device

        return getattr(device, name)
    raise AttributeError(f"module 'ondevice' has no attribute {name!r}")
