"""Label Studio ML backend for FCFI, in packages along its two data paths (each imports only from layers below it).

* the click path, ``POST /predict``: :mod:`backend.serve` parses the request, :mod:`backend.images` loads the image,
  :mod:`backend.feedback` finds the stored state of the earlier clicks, the inference worker runs the predictor,
  :mod:`backend.ls` encodes the mask as brush RLE, and the new state is stored;
* the learning path, ``POST /webhook``: :mod:`backend.learning` parses the event, keeps the brush masks in the
  training store, runs fine-tuning jobs, gates them and promotes new versions.

Below both: :mod:`backend.ls` (Label Studio's formats and ids), :mod:`backend.common` (errors, atomic writes, an LRU
cache, the Redis client) and :mod:`backend.settings`. :mod:`backend.app` wires the two paths into one Flask app
(``backend.wsgi:app``, ``python -m backend``). ``tests/test_layers.py`` checks the layering.
"""
