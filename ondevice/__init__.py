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

Importing ``ondevice`` loads nothing heavy (no llama.cpp, no onnxruntime).
"""
