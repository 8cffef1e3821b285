"""Inference runtimes: who runs the network pass of a click.

PyTorch trains the networks and runs them on CUDA. On a CPU, the same pass runs about three times faster
through an exported graph (``benchmarks/forward.py`` measures every runtime side by side), so serving picks
the runtime by name:

* ``"torch"``: PyTorch eager, channels-last on CPU.
* ``"openvino"``: the network's core exported to ONNX once, compiled by OpenVINO (fp32, dynamic sizes).
* ``"onnxruntime"``: the same ONNX graph in ONNX Runtime.

Every runner is called like the network, ``runner(image, points, new_points, gate) -> dict``, and returns
the same ``instances`` / ``feedback2`` maps at the input size. Only the part of the network that is pure
tensor code is exported (:meth:`model.lite0.Lite0FCFI.forward_core`); the click disks, the adaptive poolings
and FFCM's box geometry are computed by the network's own Python code before it
(:meth:`~model.lite0.Lite0FCFI.core_inputs`), so both paths share every line but the runtime.
A runtime whose package is missing, or a network without ``forward_core``, falls back to ``"torch"`` with
one log line; the service keeps working.
"""

from __future__ import annotations

import copy
import importlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Runtime names, fastest on a CPU first (measured: ``benchmarks/forward.py``).
RUNTIMES = ("openvino", "onnxruntime", "torch")
#: The Python package each exported runtime needs.
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
#: Names of the exported graph's inputs, in :meth:`Lite0FCFI.core_inputs` order, and its outputs.
CORE_INPUTS = ("rgb", "encoding", "prev_mask", "sim_weights", "skip_maps", "boxes", "cells", "new_points", "gate")
CORE_OUTPUTS = ("instances", "feedback2")


class Runner(Protocol):
    """Runs one network pass: ``image`` [B, 4, H, W], ``points`` [B, 2N, 3], ``new_points`` [B, 3], ``gate``
    [B] -> dict with ``instances`` logits [B, 1, H, W] and ``feedback2`` [B, 1, H, W] (or None)."""

    name: str

    def __call__(self, image: torch.Tensor, points: torch.Tensor, new_points: torch.Tensor,
                 gate: torch.Tensor) -> dict[str, torch.Tensor | None]: ...

    def set_threads(self, threads: int) -> None:
        """Run the following passes on ``threads`` CPU threads."""


class TorchRunner:
    """PyTorch eager. On a CPU it runs a channels-last copy of the network (1.34x faster than the default format in
    one run of ``benchmarks/forward.py``, equal in another; the values agree to float rounding); the caller's
    network is left as it is, so a network still being trained can be validated through a runner."""

    name = "torch"

    def __init__(self, net: nn.Module, channels_last: bool | None = None) -> None:
        device = next(net.parameters()).device
        self.channels_last = device.type == "cpu" if channels_last is None else channels_last
        self.net = copy.deepcopy(net).to(memory_format=torch.channels_last) if self.channels_last else net

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(max(1, threads))  # process-wide: fine, one thread (the worker's) runs passes

    def __call__(self, image: torch.Tensor, points: torch.Tensor, new_points: torch.Tensor,
                 gate: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.net(image, points, new_points, gate)


class _CoreGraph(nn.Module):
    """The exported part: ``forward_core`` with a tuple output (ONNX wants no dicts or Nones)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net.forward_core(*inputs)
        return tuple(out[k] for k in CORE_OUTPUTS if out.get(k) is not None)


def exportable(net: nn.Module) -> bool:
    """Whether ``net`` splits into Python-side inputs and a pure tensor core (lite0 does)."""
    return hasattr(net, "core_inputs") and hasattr(net, "forward_core")


def export_onnx(net: nn.Module, path: str | Path) -> list[str]:
    """Write ``net``'s core as an ONNX graph with dynamic batch and size; returns its output names.

    Args:
        net: an :func:`exportable` network in eval mode.
        path: the ``.onnx`` file to write.
    """
    net = net.eval().to(memory_format=torch.contiguous_format)
    h, w = 96, 128  # any size: every spatial axis is dynamic
    image = torch.rand(2, 4, h, w)
    points = torch.tensor([[[h / 2, w / 2, 100.0], [h / 4, w / 4, 100.0]]] * 2)
    new_points = torch.tensor([[h / 4, w / 4, 0.0]] * 2)
    with torch.no_grad():
        inputs = net.core_inputs(*net.prepare(image, points), new_points, torch.ones(2))
        outputs = [k for k in CORE_OUTPUTS if net.forward_core(*inputs).get(k) is not None]
    spatial = {0: "batch", 2: "height", 3: "width"}
    dynamic = {"rgb": spatial, "encoding": spatial, "prev_mask": spatial,
               "sim_weights": {0: "batch", 2: "height16", 3: "width16"},
               "skip_maps": {0: "batch", 2: "height4", 3: "width4"},
               "boxes": {0: "batch"}, "cells": {0: "batch"}, "new_points": {0: "batch"}, "gate": {0: "batch"}}
    dynamic.update({k: {0: "batch", 2: "height4", 3: "width4"} for k in outputs})
    # The wrapper must be in eval mode: the exporter restores the wrapper's mode onto every submodule afterwards,
    # and a new module is in training mode (that would leave ``net`` training, i.e. BatchNorm on batch statistics).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: those inputs are computed outside
        torch.onnx.export(_CoreGraph(net).eval(), inputs, str(path), dynamo=False, opset_version=17,
                          input_names=list(CORE_INPUTS), output_names=outputs, dynamic_axes=dynamic)
    net.eval()
    return outputs


class _GraphRunner:
    """Shared part of the exported runtimes: Python-side inputs, the graph, the output resize."""

    name = "graph"

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()
        self.threads = torch.get_num_threads()
        self._engines: dict[int, object] = {}  # thread count -> compiled model / session
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "core.onnx"
            self.outputs = export_onnx(net, path)
            self._onnx = path.read_bytes()
        # The exporter drops inputs the graph never reads (the baseline variant, ``fcfi="none"``, takes the previous
        # mask inside the encoding only, so it has no ``prev_mask`` input): feed what the graph kept.
        import onnx

        kept = {i.name for i in onnx.load_model_from_string(self._onnx).graph.input}
        self.inputs = [name for name in CORE_INPUTS if name in kept]
        self._engine = self._engine_for(self.threads)

    def _engine_for(self, threads: int) -> object:
        """The engine that runs on ``threads`` threads (a runtime fixes the count when it compiles), built once."""
        if threads not in self._engines:
            self._engines[threads] = self._load(self._onnx, threads)
        return self._engines[threads]

    def set_threads(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._engine = self._engine_for(self.threads)

    def _load(self, onnx: bytes, threads: int) -> object:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor, points: torch.Tensor, new_points: torch.Tensor,
                 gate: torch.Tensor) -> dict[str, torch.Tensor | None]:
        with torch.inference_mode():
            inputs = self.net.core_inputs(*self.net.prepare(image, points), new_points, gate)
            feed = {name: t.detach().cpu().contiguous().numpy() for name, t in zip(CORE_INPUTS, inputs, strict=True)
                    if name in self.inputs}
            out = {k: torch.from_numpy(np.asarray(v)) for k, v in zip(self.outputs, self._infer(feed), strict=True)}
            return self.net.upsample_outputs(out, tuple(image.shape[-2:]))


class OpenVINORunner(_GraphRunner):
    """OpenVINO on the CPU, fp32 (bf16 changes the masks), latency mode, torch's thread count."""

    name = "openvino"

    def _load(self, onnx: bytes, threads: int) -> object:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(core.read_model(onnx, b""), "CPU", config)
        return compiled, compiled.create_infer_request()  # one thread calls a runner (the worker's)

    def _infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled, request = self._engine
        result = request.infer(feed)
        return [result[compiled.output(k)] for k in self.outputs]


class OnnxRuntimeRunner(_GraphRunner):
    """ONNX Runtime's CPU provider with torch's thread count."""

    name = "onnxruntime"

    def _load(self, onnx: bytes, threads: int) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])

    def _infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._engine.run(self.outputs, feed)


def available(runtime: str) -> bool:
    """Whether ``runtime``'s package imports ("torch" always does)."""
    package = _PACKAGES.get(runtime)
    if package is None:
        return True
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def make_runner(net: nn.Module, runtime: str = "torch") -> Runner:
    """The runner for ``runtime`` (one of :data:`RUNTIMES`), falling back to PyTorch with a log line when the
    runtime's package is missing, the network is on a GPU or it cannot be exported.

    Raises:
        ValueError: an unknown runtime name.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return TorchRunner(net)
    device = next(net.parameters()).device
    why = None
    if device.type != "cpu":
        why = f"the network is on {device}"
    elif not exportable(net):
        why = f"{type(net).__name__} has no exportable core"
    elif not available(runtime):
        why = f"the package {_PACKAGES[runtime]!r} is not installed"
    if why is None:
        try:
            return (OpenVINORunner if runtime == "openvino" else OnnxRuntimeRunner)(net)
        except Exception as exc:  # a runtime that fails to build must not take the service down
            why = f"it failed to load ({type(exc).__name__}: {exc})"
    log.warning("runtime %s unavailable: %s; running PyTorch eager instead", runtime, why)
    return TorchRunner(net)
