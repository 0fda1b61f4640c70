"""What the benchmark runs: one Backend per (runtime, precision, device, mode).

``prepare(batch)`` puts the batch where the backend runs (GPU memory, a bound ORT value) and
returns a zero-argument function that runs one inference on it and returns only when the work
is done (GPU backends synchronize inside it), so the timer measures inference and nothing else.
``logits(batch)`` is the plain path used for accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rescompile._lazy import import_optional


@dataclass
class Backend:
    key: str  # short id: torch-fp32, ort-int8, trt-int8, ...
    name: str  # what a person reads in the table
    precision: str  # fp32 | fp16 | int8
    device: str  # cpu | cuda | the GPU name
    mode: str = "compute"  # "compute": inputs resident; "end-to-end": host->device->host copies timed
    reference: bool = False  # the FP32 PyTorch eager baseline every ratio is against
    build_seconds: float | None = None  # engine build / torch.compile time, reported apart from latency
    max_batch: int | None = None
    comparison: bool = False  # not from the bundle (e.g. another tool's INT8 model): never the verdict's subject
    about: str | None = None  # for a comparison: how it was made (shown with the environment)
    notes: list[str] = field(default_factory=list)
    takes_pixels: bool = False  # a pixel-input artifact: uint8 (N, H, W, 3) in, normalisation folded in

    def prepare(self, batch: np.ndarray) -> Callable[[], Any]:
        raise NotImplementedError

    def prepare_pixels(self, pixels: np.ndarray, prep: Any) -> Callable[[], Any]:
        """One inference from uint8 pixels, as an app holding camera frames runs it: a float-input
        backend normalises them (rescompile's numpy preprocessing) inside the timed call."""
        return lambda: self.logits(prep.normalize(pixels))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        return None


class TorchBackend(Backend):
    def __init__(self, module: Any, input_shape: tuple[int, int, int], *, device: str = "cpu", channels_last: bool = False,
                 compile: bool = False, threads: int | None = None) -> None:
        torch = import_optional("torch")

        if threads:
            torch.set_num_threads(threads)
        variant = " channels_last" if channels_last else ""
        variant += " torch.compile" if compile else ""
        key = "torch-fp32" + ("-cl" if channels_last else "") + ("-compile" if compile else "")
        super().__init__(key, f"PyTorch FP32 {'eager' if not compile else ''}{variant}".replace("  ", " ").strip(), "fp32",
                         device, reference=not (channels_last or compile))
        self._torch = torch
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        module = module.to(device).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        if compile:
            start = time.perf_counter()
            module = torch.compile(module)
            with torch.inference_mode():  # compile happens on the first call: time it as build
                module(torch.zeros(1, *input_shape, device=device).contiguous(memory_format=self._memory_format))
            self.build_seconds = time.perf_counter() - start
        self._module = module
        self._cuda = str(device).startswith("cuda")

    def _to_device(self, batch: np.ndarray):
        x = self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return x.contiguous(memory_format=self._memory_format)

    def prepare(self, batch: np.ndarray) -> Callable[[], Any]:
        x, torch, module = self._to_device(batch), self._torch, self._module
        sync = torch.cuda.synchronize if self._cuda else (lambda: None)

        def run() -> None:
            with torch.inference_mode():
                module(x)
            sync()

        return run

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._module(self._to_device(batch)).float().cpu().numpy()


class OrtBackend(Backend):
    def __init__(self, key: str, name: str, path: Path, precision: str, *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        ort = import_optional("onnxruntime")

        providers = providers or ["CPUExecutionProvider"]
        cuda = providers[0] == "CUDAExecutionProvider"
        super().__init__(key, name, precision, "cuda" if cuda else "cpu")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self._ort = ort
        self._session = ort.InferenceSession(str(path), so, providers=providers)
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._output = self._session.get_outputs()[0].name
        self._cuda = cuda
        self.takes_pixels = first.type == "tensor(uint8)"
        from rescompile.runtime.onnxruntime import FEED_DTYPES

        self._float = FEED_DTYPES.get(first.type, np.float32)  # a file that still takes float16 is fed float16

    def prepare_pixels(self, pixels: np.ndarray, prep: Any) -> Callable[[], Any]:
        if not self.takes_pixels or self._cuda:
            return super().prepare_pixels(pixels, prep)
        session, feed, out = self._session, {self._input: np.ascontiguousarray(pixels)}, [self._output]
        return lambda: session.run(out, feed)

    def prepare(self, batch: np.ndarray) -> Callable[[], Any]:
        session, x = self._session, np.ascontiguousarray(batch, dtype=self._float)
        if not self._cuda:
            feed, out = {self._input: x}, [self._output]
            return lambda: session.run(out, feed)
        # On the GPU, bind the input once in device memory so only inference is timed.
        binding = session.io_binding()
        binding.bind_ortvalue_input(self._input, self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(self._output, "cuda")

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits of a float batch, or of uint8 pixels for a pixel-input artifact."""
        x = np.ascontiguousarray(batch, dtype=np.uint8 if self.takes_pixels else self._float)
        return self._session.run([self._output], {self._input: x})[0]


class OpenVINOBackend(Backend):
    """An ONNX model compiled by OpenVINO for the CPU (latency hint), fed from numpy like OrtBackend.
    ``build_seconds`` is the compile time (a cache read when OpenVINO's cache already holds the model)."""

    def __init__(self, key: str, name: str, path: Path, precision: str, *, threads: int | None = None) -> None:
        from rescompile.runtime.openvino import model_takes_pixels, compile_onnx

        super().__init__(key, name, precision, "cpu")
        start = time.perf_counter()
        self._compiled = compile_onnx(path, threads=threads)
        self.build_seconds = time.perf_counter() - start
        self._request = self._compiled.create_infer_request()
        self.takes_pixels = model_takes_pixels(self._compiled)

    def _x(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch, dtype=np.uint8 if self.takes_pixels else np.float32)

    def prepare_pixels(self, pixels: np.ndarray, prep: Any) -> Callable[[], Any]:
        if not self.takes_pixels:
            return super().prepare_pixels(pixels, prep)
        return self.prepare(pixels)

    def prepare(self, batch: np.ndarray) -> Callable[[], Any]:
        request, feed = self._request, {0: self._x(batch)}
        return lambda: request.infer(feed, share_inputs=True)  # no input copy, as ORT reads the numpy buffer

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits of a float batch, or of uint8 pixels for a pixel-input artifact."""
        self._request.infer({0: self._x(batch)}, share_inputs=True)  # as prepare() does: a copying infer cannot
        # resize the shared tensor prepare() left in the request (OpenVINO refuses a larger shape)
        return np.array(self._request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self._request = self._compiled = None


class TrtBackend(Backend):
    """A TensorRT engine through the runtime's runner: compute-only (bound device buffers) or end-to-end."""

    def __init__(self, key: str, name: str, runner: Any, precision: str, *, end_to_end: bool = False,
                 build_seconds: float | None = None) -> None:
        super().__init__(key, name, precision, "cuda", "end-to-end" if end_to_end else "compute",
                         build_seconds=build_seconds, max_batch=runner.batch_range[1])
        self._runner = runner

    def prepare(self, batch: np.ndarray) -> Callable[[], Any]:
        if self.mode == "end-to-end":
            return lambda: self._runner.infer(batch)
        self._runner.bind(batch)
        return self._runner.execute

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.infer(batch)

    def close(self) -> None:
        self._runner.close()
