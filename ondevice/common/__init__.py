"""What both sides run: imported by the device (``ondevice``), the edge (``edge_server``) and the
workstation tools (``export``). The edge server and the export tools import nothing else from
``ondevice``.

- ``wire``: the device-edge wire format (msgpack frames, raw little-endian arrays).
- ``discovery_record``: the zeroconf service type and TXT record.
- ``llama_runtime``, ``gguf_file``, ``gguf_quantize``, ``model_sidecar``: the thin llama.cpp
  runtime, the GGUF file check, llama.cpp's quantizer, the model sidecar schema.
- ``speculative``: the lossless rejection sampler and the draft's top-k proposal.
- ``feature_codec``, ``dnn_profile``, ``split_math``, ``sample_photos``: the split DNN's 8-bit
  feature packets, its ``profile.json``, the shared ENACHI math (edge bandwidth shares, stop
  thresholds) and the seeded evaluation crops.
- ``stream_advice``: the edge's advice to stream, which the fleet simulator computes too.
- ``files``: atomic file output; ``jsonout``: strict JSON (NaN and infinities as null).
- ``seed``: the seed range a user may pass and the one an ``open`` frame carries;
  ``budget``: the tolerance within which an energy budget counts as held.
- ``http_guard``, ``http_limits``, ``bearer``: what the two HTTP servers (the edge and
  ``ondevice serve``) share: connection guards below aiohttp, their flags and defaults, bearer
  tokens compared in constant time.

Rule (checked by tests/test_layout.py): modules here import only the standard library, numpy,
msgpack, llama-cpp-python, onnxruntime and each other; never ``ondevice``'s other subpackages,
``edge_server``, ``export``, ``hw``, aiohttp, zeroconf or torch. The exceptions:
``sample_photos`` reads the photos scikit-learn and scikit-image ship (with Pillow) inside its
functions, and ``http_guard`` wraps aiohttp's connections (aiohttp is a base dependency).
Importing this package loads none of its modules.
"""
