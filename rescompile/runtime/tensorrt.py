"""TensorRT runner: deserialize a plan and run it with the TensorRT 10/11 name-based I/O API.

Every direct ``tensorrt`` call of the runtime lives in this module. Device memory and the CUDA
stream come from ``polygraphy.cuda`` (a ctypes wrapper over libcudart), so running an engine
needs neither PyTorch nor pycuda. API used, stable from TensorRT 8.5 through 11:
``Runtime.deserialize_cuda_engine``, ``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``,
``get_tensor_profile_shape``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rescompile import nvidia
from rescompile._lazy import import_optional
from rescompile.errors import ModelError
from rescompile.models.spec import ModelSpec
from rescompile.runtime.base import Runner, RunnerError
from rescompile.runtime.compat import RuntimeMismatchError, check_engine

log = logging.getLogger(__name__)


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        *,
        spec: ModelSpec | None = None,
        engine_info: dict[str, Any] | None = None,
        bundle_dir: str | Path | None = None,
        output_name: str | None = None,
        check: bool = True,
        allow_host_code: bool | None = None,
    ) -> None:
        """``engine_info`` is the manifest's ``engine`` entry: with it (and ``check``), the
        TensorRT version and GPU are compared before TensorRT reads a byte of the plan.
        ``allow_host_code``: see `rescompile.runtime.load` (None: when the manifest says the
        engine is version-compatible)."""
        path = Path(engine_path)
        if not path.is_file():
            raise ModelError(f"no TensorRT engine at {path}", "Pass the .engine/.plan file or its bundle directory")
        if engine_info is not None and check:
            check_engine(
                engine_info, nvidia.tensorrt_version(), nvidia.find_gpu(),
                bundle_dir=str(bundle_dir) if bundle_dir is not None else None,
            )
        trt = import_optional("tensorrt")
        cuda = import_optional("polygraphy.cuda")
        self._trt, self._cuda = trt, cuda
        self._buffers: dict[str, Any] = {}
        self._stream = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        host_code = allow_host_code if allow_host_code is not None else bool((engine_info or {}).get("version_compatible"))
        if host_code:
            # Developer guide, "Version Compatibility": a version-compatible plan carries its own
            # lean runtime, which the runtime may load only when host code is allowed.
            self._runtime.engine_host_code_allowed = True
        dla_core = (engine_info or {}).get("dla_core")
        if dla_core is not None:
            # The runtime picks the DLA core an engine runs on, not the plan: without this an engine
            # built for core 1 runs on core 0 (trtexec sets it the same way before deserializing,
            # samples/common/sampleEngines.cpp at v10.3.0).
            self._runtime.DLA_core = int(dla_core)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            fix = "The engine was built by another TensorRT version or for another GPU: rebuild it on this machine"
            if engine_info is None and not host_code:
                fix += (", or, if it was built version-compatible (--version-compatible), load it with allow_host_code=True"
                        " (TensorRT then runs code stored in the plan: only for engines you trust)")
            raise RuntimeMismatchError(
                f"TensorRT {getattr(trt, '__version__', '?')} could not deserialize {path} (its log above says why)", fix,
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RunnerError(f"TensorRT could not create an execution context for {path}", "Free GPU memory and retry")
        in_name, out_name = self._io_names(output_name, path)
        self._dtypes = {name: self._np_dtype(name, path) for name in self._all_names()}
        dims = tuple(self._engine.get_tensor_shape(in_name))
        if len(dims) != 4:
            raise ModelError(f"{path} takes a rank-{len(dims)} input, not an NCHW batch", "Rebuild it from an NCHW ONNX model")
        self.batch_range = self._batch_range(in_name, dims)
        self._stream = cuda.Stream()
        super().__init__(
            spec=spec,
            source=path,
            input_name=in_name,
            output_name=out_name,
            input_shape=tuple(int(d) if d > 0 else None for d in dims[1:]),
        )

    # -- setup ------------------------------------------------------------------------
    def _all_names(self) -> list[str]:
        return [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]

    def _io_names(self, output_name: str | None, path: Path) -> tuple[str, str]:
        trt = self._trt
        inputs, outputs = [], []
        for name in self._all_names():
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(name)
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{path} has {len(inputs)} inputs and {len(outputs)} outputs",
                "The runtime takes classifiers with one image input and a logits output",
            )
        return inputs[0], output_name if output_name in outputs else outputs[0]

    def _np_dtype(self, name: str, path: Path) -> np.dtype:
        trt_type = self._engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(trt_type))
        except TypeError as exc:  # bf16/fp8/int4 I/O have no numpy type
            raise ModelError(f"{path}: tensor {name!r} has type {trt_type}, which numpy cannot hold", "Rebuild the engine with float32 I/O") from exc

    def _batch_range(self, name: str, dims: tuple[int, ...]) -> tuple[int, int]:
        if dims[0] > 0:
            return int(dims[0]), int(dims[0])
        # Dynamic batch: optimization profile 0 (the one a fresh context uses) bounds it.
        low, _opt, high = self._engine.get_tensor_profile_shape(name, 0)
        return int(low[0]), int(high[0])

    # -- running ----------------------------------------------------------------------
    def check_batch(self, batch: Any) -> np.ndarray:
        batch = super().check_batch(batch)
        low, high = self.batch_range
        if not low <= batch.shape[0] <= high:
            raise RunnerError(
                f"the engine takes batches of {low} to {high} images (its optimization profile), got {batch.shape[0]}",
                "Split the batch, or rebuild the engine with a larger maximum batch",
            )
        return batch

    def _device_buffer(self, name: str, shape: tuple[int, ...]):
        from polygraphy.datatype import DataType

        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._cuda.DeviceArray(shape=shape, dtype=DataType.from_dtype(self._dtypes[name]))
            self._buffers[name] = buffer
        else:
            buffer.resize(shape)  # reallocates only when it must grow
        return buffer

    def _run(self, batch: np.ndarray) -> np.ndarray:
        ctx = self._context
        host_in = np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])
        if not ctx.set_input_shape(self.input_name, host_in.shape):
            raise RunnerError(f"TensorRT refused input shape {host_in.shape}", "Use a batch inside the engine's optimization profile")
        shapes = {name: tuple(ctx.get_tensor_shape(name)) for name in self._dtypes if name != self.input_name}
        for name, shape in shapes.items():
            if any(d < 0 for d in shape):
                raise RunnerError(f"TensorRT could not infer the shape of output {name!r} ({shape})", "Rebuild the engine")
        d_in = self._device_buffer(self.input_name, host_in.shape)
        ctx.set_tensor_address(self.input_name, d_in.ptr)
        for name, shape in shapes.items():  # every I/O tensor needs an address, used or not
            ctx.set_tensor_address(name, self._device_buffer(name, shape).ptr)
        d_in.copy_from(host_in, stream=self._stream)
        if not ctx.execute_async_v3(self._stream.ptr):
            raise RunnerError("TensorRT failed to enqueue the engine (its log above says why)", "Check the input shape and GPU memory")
        host_out = np.empty(shapes[self.output_name], dtype=self._dtypes[self.output_name])
        self._buffers[self.output_name].copy_to(host_out, stream=self._stream)
        self._stream.synchronize()  # host_out and host_in must outlive the async copies
        return host_out.astype(np.float32, copy=False)

    # -- compute-only timing (the benchmark): inputs resident, no copies timed ---------------
    def bind(self, batch: Any) -> None:
        """Copy ``batch`` to the device once and bind every I/O tensor; `execute` then reruns it."""
        batch = self.check_batch(batch)
        ctx = self._context
        host_in = np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])
        if not ctx.set_input_shape(self.input_name, host_in.shape):
            raise RunnerError(f"TensorRT refused input shape {host_in.shape}", "Use a batch inside the engine's optimization profile")
        d_in = self._device_buffer(self.input_name, host_in.shape)
        ctx.set_tensor_address(self.input_name, d_in.ptr)
        for name in self._dtypes:
            if name != self.input_name:
                ctx.set_tensor_address(name, self._device_buffer(name, tuple(ctx.get_tensor_shape(name))).ptr)
        d_in.copy_from(host_in, stream=self._stream)
        self._stream.synchronize()

    def execute(self) -> None:
        """One inference on the bound buffers, returning when the GPU has finished it."""
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RunnerError("TensorRT failed to enqueue the engine (its log above says why)", "Check the input shape and GPU memory")
        self._stream.synchronize()

    def _release(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers = {}
        if self._stream is not None:
            self._stream.free()
            self._stream = None
        # The context uses the engine and the engine the runtime: drop them in that order.
        self._context = None
        self._engine = None
        self._runtime = None
