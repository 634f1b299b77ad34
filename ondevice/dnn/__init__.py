"""Split DNN inference on the device (ENACHI): ``head`` (onnxruntime heads, datasets, images),
``classify`` (one task: head, progressive packets, stop, fallback, energy), ``enachi`` (the
controller's pure math), ``policy`` (per-task plans of enachi and the baselines) and ``run`` (a
classification run: data, meter, radio, edge, report)."""
