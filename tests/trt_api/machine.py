"""A simulated TensorRT behind the stand-in modules: it parses ONNX files, checks what the real
builder and runtime check, and runs the "plan" with ONNX Runtime.

The checks are TensorRT's documented ones (surface.py says where each was read):
- INT8 calibration of a network without Q/DQ needs a calibrator whose pure-virtual methods are
  all defined, a cache tagged with this TensorRT's version and the calibrator's algorithm (else
  it calibrates, and a replay-only calibrator has no data), and, with dynamic shapes, a
  calibration profile (IBuilderConfig.set_calibration_profile);
- DLA needs min = opt = max, FP16 or INT8 layers, implicit INT8 (a Q/DQ network cannot run there:
  NVIDIA/TensorRT#2222) and a core the module has (else config.DLA_core is ignored, NvInfer.h);
  without GPU fallback a Q/DQ or dynamic network fails the build, with it every layer silently
  runs on the GPU; DLA with a cache needs EntropyCalibration2; the runtime runs a DLA engine on
  its own Runtime.DLA_core (default 0), not the core the plan was built for;
- hardware compatibility is refused on a Jetson;
- a timing cache from another device is refused by set_timing_cache (ignore_mismatch=False);
- the ONNX parser refuses per-channel DequantizeLinear below opset 13;
- the runtime deserializes only plans of its own version (or version-compatible ones of an
  older version, with host code allowed), for its own compute capability unless built
  AMPERE_PLUS (then on sm_80+ only).
A "plan" is b"STANDINPLAN\\n" + a JSON header line + the ONNX bytes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from tests.trt_api.standin import EnumValue, make_tensorrt

MAGIC = b"STANDINPLAN\n"
_CALIBRATOR_ALGORITHMS = {
    "IInt8EntropyCalibrator2": "EntropyCalibration2", "IInt8EntropyCalibrator": "EntropyCalibration",
    "IInt8MinMaxCalibrator": "MinMaxCalibration", "IInt8LegacyCalibrator": "LegacyCalibration",
}
_ABSTRACT = {
    "IInt8LegacyCalibrator": ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache",
                              "get_quantile", "get_regression_cutoff", "read_histogram_cache", "write_histogram_cache"),
}
_DEFAULT_ABSTRACT = ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache")


@dataclass
class Machine:
    """The simulated device and what happened on it."""

    version: str
    gpu_name: str = "NVIDIA L4"
    compute_capability: str = "8.9"
    jetson: bool = False
    dla_cores: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)  # (severity, message) as TensorRT logged it
    builds: list[dict[str, Any]] = field(default_factory=list)  # each build's header
    deserialized: list[int] = field(default_factory=list)  # sizes of the plans the runtime was handed
    dla_runs: list[int] = field(default_factory=list)  # the DLA core each deserialized DLA engine runs on
    runtimes: list[Any] = field(default_factory=list)  # every Runtime created
    trt: Any = None

    def emit(self, logger: Any, severity: str, message: str) -> None:
        self.log.append((severity, message))
        if logger is not None and hasattr(type(logger), "log") and logger is not None:
            try:
                logger.log(getattr(self.trt.ILogger.Severity, severity), message)
            except NotImplementedError:
                pass

    @property
    def version_code(self) -> int:
        parts = [int(p) for p in self.version.split(".")[:3]]
        return parts[0] * 10000 + parts[1] * 100 + parts[2]


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".")[:3])


def tensorrt_for(machine: Machine) -> Any:
    """The stand-in module for ``machine.version`` with this machine's behaviour installed."""
    m = machine
    trt: Any = None

    def flag(name: str) -> Any:
        return getattr(trt.BuilderFlag, name, None)

    # -- logging ----------------------------------------------------------------------------
    def logger_init(self, min_severity=None):
        self.min_severity = min_severity if min_severity is not None else trt.Logger.WARNING

    def logger_log(self, severity, msg):
        m.log.append((severity.name, msg))

    def ilogger_init(self):
        pass

    # -- network and parser -----------------------------------------------------------------
    def builder_init(self, logger):
        self._sti["logger"] = logger

    def create_network(self, flags=0):
        net = trt.INetworkDefinition()
        net._sti.update(flags=int(flags), inputs=[], outputs=[], layers=[], onnx=None, opset=None)
        return net

    def create_builder_config(self):
        cfg = trt.IBuilderConfig()
        cfg._sti.update(flags=set(), pools={}, profiles=[], calib_profile=None, timing_cache=None)
        if hasattr(trt.BuilderFlag, "TF32"):
            cfg._sti["flags"].add(trt.BuilderFlag.TF32)  # TF32 is on by default in TensorRT
        return cfg

    def create_optimization_profile(self):
        p = trt.IOptimizationProfile()
        p._sti["shapes"] = {}
        return p

    def parser_init(self, network, logger):
        self._sti.update(network=network, logger=logger, errors=[])

    def _error(parser, text):
        err = trt.ParserError()
        err._sti["text"] = text
        parser._sti["errors"].append(err)
        return False

    def parse_bytes(self, data, path=None):
        try:
            model = onnx.load_from_string(bytes(data))
        except Exception as exc:  # noqa: BLE001 - the parser reports, it does not raise
            return _error(self, f"failed to parse ONNX: {exc}")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        for node in model.graph.node:
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            if node.op_type == "DequantizeLinear" and opset < 13 and axis is not None:
                return _error(self, f"{node.name}: per-axis DequantizeLinear needs opset 13 (model opset {opset})")
        net = self._sti["network"]
        inits = {i.name for i in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            t = trt.ITensor()
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            t._sti.update(name=vi.name, shape=tuple(dims), dtype=trt.DataType.FLOAT, is_shape_tensor=False)
            net._sti["inputs"].append(t)
        for node in model.graph.node:
            layer = trt.ILayer()
            kind = {"QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}.get(node.op_type)
            layer_type = getattr(trt.LayerType, kind) if kind else EnumValue("LayerType", node.op_type.upper(), -1)
            layer._sti.update(name=node.name or node.output[0], type=layer_type)
            net._sti["layers"].append(layer)
        net._sti.update(onnx=bytes(data), opset=opset, outputs=[o.name for o in model.graph.output])
        return True

    def parse_from_file(self, model):  # the real bindings' parameter names, so keyword calls behave alike
        with open(model, "rb") as fh:
            return parse_bytes(self, fh.read(), model)

    def parse(self, model, path=None):
        return parse_bytes(self, model, path)

    # -- network introspection used by Polygraphy -------------------------------------------
    def get_input(self, index):
        return self._sti["inputs"][index]

    def net_len(self):
        return len(self._sti["layers"])

    def net_getitem(self, i):
        layers = self._sti["layers"]
        if not -len(layers) <= i < len(layers):
            raise IndexError(i)
        return layers[i]

    def net_get_flag(self, flag):
        return bool(self._sti["flags"] & (1 << int(flag)))

    def profile_set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's names
        self._sti["shapes"][input] = (tuple(min), tuple(opt), tuple(max))

    def profile_get_shape(self, input):  # noqa: A002 - TensorRT's name
        return list(self._sti["shapes"].get(input, ()))

    def profile_bool(self):
        return all(all(lo <= o <= hi for lo, o, hi in zip(*s)) for s in self._sti["shapes"].values())

    # -- builder config ---------------------------------------------------------------------
    def set_flag(self, flag):
        self._sti["flags"].add(flag)

    def clear_flag(self, flag):
        self._sti["flags"].discard(flag)

    def get_flag(self, flag):
        return flag in self._sti["flags"]

    def set_pool(self, pool, pool_size):
        self._sti["pools"][pool] = pool_size

    def get_pool(self, pool):
        return self._sti["pools"].get(pool, 1 << 30)

    def add_profile(self, profile):
        self._sti["profiles"].append(profile)
        return len(self._sti["profiles"]) - 1

    def set_calibration_profile(self, profile):
        self._sti["calib_profile"] = profile
        return True

    def get_calibration_profile(self):
        return self._sti["calib_profile"]

    def create_timing_cache(self, serialized_timing_cache):
        cache = trt.ITimingCache()
        data = serialized_timing_cache
        record = json.loads(bytes(data).decode()) if data else {}
        cache._sti["record"] = record or {"device": m.gpu_name, "version": m.version, "entries": 0}
        return cache

    def set_timing_cache(self, cache, ignore_mismatch):
        record = cache._sti["record"]
        if (record["device"], record["version"]) != (m.gpu_name, m.version) and not ignore_mismatch:
            m.emit(None, "ERROR", "timing cache was created on a different device or TensorRT version")
            return False
        self._sti["timing_cache"] = cache
        return True

    def get_timing_cache(self):
        return self._sti["timing_cache"]

    def num_profiles_get(self):
        return len(self._sti["profiles"])

    def zero(self, *args):
        return 0

    def false(self, *args):
        return False

    # -- timing cache and host memory -------------------------------------------------------
    def cache_combine(self, input_cache, ignore_mismatch):
        mine, theirs = self._sti["record"], input_cache._sti["record"]
        if (mine["device"], mine["version"]) != (theirs["device"], theirs["version"]) and not ignore_mismatch:
            return False
        mine["merged_from"] = sorted({*mine.get("merged_from", []), theirs["device"]})
        return True

    def cache_serialize(self):
        return host_memory(json.dumps(self._sti["record"]).encode())

    def host_memory(data):
        mem = trt.IHostMemory.__new__(trt.IHostMemory, data)
        object.__setattr__(mem, "_sti", {})
        return mem

    def mem_enter(self):
        return self

    def mem_exit(self, *exc):
        return False

    # -- the builder ------------------------------------------------------------------------
    def fail(logger, text):
        m.emit(logger, "ERROR", text)
        return None

    def build_serialized_network(self, network, config):
        logger = self._sti.get("logger")
        net, cfg = network._sti, config._sti
        if net["onnx"] is None:
            return fail(logger, "network is empty")
        profiles = [p._sti["shapes"] for p in cfg["profiles"]]
        if not profiles:
            return fail(logger, "network has dynamic or shape inputs, but no optimization profile has been defined")
        dynamic = any(lo != hi for shapes in profiles for lo, _, hi in shapes.values())
        flags = cfg["flags"]
        dla = config.default_device_type == trt.DeviceType.DLA
        jetson_only = config.hardware_compatibility_level not in (None, trt.HardwareCompatibilityLevel.NONE)
        if jetson_only and m.jetson:
            return fail(logger, "hardware compatibility is not supported on this platform")
        header: dict[str, Any] = {
            "version": m.version, "device": m.gpu_name, "cc": m.compute_capability,
            "version_compatible": flag("VERSION_COMPATIBLE") in flags,
            "hardware": getattr(config.hardware_compatibility_level, "name", "NONE"),
            "profile": [list(map(list, s)) for s in profiles[0].values()][0],
            "fp16": flag("FP16") in flags if flag("FP16") else False,
            "int8": flag("INT8") in flags if flag("INT8") else False,
            "tf32": flag("TF32") in flags, "dla_core": None, "calibrated_from": None,
            "strongly_typed": bool(net["flags"] & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))),
        }
        has_qdq = any(layer.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE) for layer in net["layers"])
        if dla:
            fallback = flag("GPU_FALLBACK") in flags
            if not 0 <= config.DLA_core < m.dla_cores:
                # NvInfer.h (setDLACore): a core the module lacks is ignored; the layers run on the GPU.
                m.emit(logger, "WARNING", f"DLA core {config.DLA_core} is not available ({m.dla_cores} cores): running on the GPU")
            elif has_qdq:
                # DLA runs implicit INT8 only (NVIDIA/TensorRT#2222): Q/DQ layers cannot run there.
                if not fallback:
                    return fail(logger, "DLA does not support explicitly quantized (Q/DQ) networks")
                m.emit(logger, "WARNING", "Q/DQ layers are not supported on DLA: falling back to the GPU")
            elif dynamic:
                if not fallback:
                    return fail(logger, "DLA does not support dynamic shapes (min, opt and max must be equal)")
                m.emit(logger, "WARNING", "DLA cannot run layers with dynamic shapes: every layer falls back to the GPU")
            elif not (header["fp16"] or header["int8"] or header["strongly_typed"]):
                return fail(logger, "DLA runs FP16 and INT8 layers only")
            else:
                header["dla_core"] = config.DLA_core
        if header["int8"] and not has_qdq:
            cal = getattr(config, "int8_calibrator", None) if hasattr(trt.IBuilderConfig, "set_calibration_profile") else None
            if cal is None:
                return fail(logger, "INT8 requested without Q/DQ layers, dynamic ranges or a calibrator")
            base = next((b.__name__ for b in type(cal).__mro__ if b.__name__ in _CALIBRATOR_ALGORITHMS), None)
            for name in _ABSTRACT.get(base, _DEFAULT_ABSTRACT):
                if not callable(getattr(cal, name, None)):
                    return fail(logger, f"calibrator: pure virtual method {base}::{name} called (not overridden)")
            if dynamic and cfg["calib_profile"] is None:
                return fail(logger, "Calibration profile must be set if int8 calibration is used with runtime dimensions")
            algorithm = _CALIBRATOR_ALGORITHMS[base]
            if dla and algorithm != "EntropyCalibration2":
                return fail(logger, "DLA requires the EntropyCalibration2 calibrator")
            if base == "IInt8LegacyCalibrator":
                cal.get_quantile(), cal.get_regression_cutoff(), cal.read_histogram_cache(0)
            cache = cal.read_calibration_cache()
            first = bytes(cache or b"").split(b"\n", 1)[0].decode(errors="replace")
            if first != f"TRT-{m.version_code}-{algorithm}":
                m.emit(logger, "WARNING", f"calibration cache header {first!r} does not match; calibrating")
                if cal.get_batch(["input"]) is None:
                    return fail(logger, "calibration failure: the calibrator returned no batch")
            header["calibrated_from"] = first
            scales = {line.split(b":")[0].decode() for line in bytes(cache).splitlines()[1:] if b":" in line}
            for node in onnx.load_from_string(net["onnx"]).graph.node:
                for out in node.output:
                    if out not in scales:
                        m.emit(logger, "WARNING", f"Missing scale and zero-point for tensor {out}, expect fall back to non-int8 implementation")
        tc = cfg["timing_cache"]
        if tc is not None:
            tc._sti["record"]["entries"] = tc._sti["record"].get("entries", 0) + 1
        m.builds.append(header)
        return host_memory(MAGIC + json.dumps(header).encode() + b"\n" + net["onnx"])

    # -- runtime ----------------------------------------------------------------------------
    def runtime_init(self, logger):
        self._sti["logger"] = logger
        m.runtimes.append(self)

    def deserialize(self, serialized_engine):
        logger = self._sti.get("logger")
        data = bytes(serialized_engine)
        m.deserialized.append(len(data))
        if not data.startswith(MAGIC):
            return fail(logger, "magic tag does not match")
        head, onnx_bytes = data[len(MAGIC):].split(b"\n", 1)
        header = json.loads(head)
        built, here = _v(header["version"]), _v(m.version)
        if header["version_compatible"]:
            if not self.engine_host_code_allowed:
                return fail(logger, "the plan contains host code (lean runtime): set engine_host_code_allowed to deserialize it")
            if here < built or here[0] not in ((10, 11) if built[0] == 10 else (built[0],)):
                return fail(logger, f"version-compatible plan from {header['version']} cannot run on {m.version}")
        elif built != here:
            return fail(logger, f"serialization version mismatch: plan {header['version']}, runtime {m.version}")
        here_cc = tuple(int(p) for p in m.compute_capability.split("."))
        if header["hardware"] in ("NONE", "SAME_COMPUTE_CAPABILITY") and header["cc"] != m.compute_capability:
            return fail(logger, "the plan was built for another compute capability")
        if header["hardware"] == "AMPERE_PLUS" and here_cc < (8, 0):
            return fail(logger, "an AMPERE_PLUS plan needs an Ampere or later GPU (sm_80+)")
        if header.get("dla_core") is not None:
            if not 0 <= self.DLA_core < m.dla_cores:
                return fail(logger, f"DLA core {self.DLA_core} is not available on this module")
            m.dla_runs.append(self.DLA_core)  # the runtime's core, not the one the plan was built for
        engine = trt.ICudaEngine()
        engine._sti.update(header=header, onnx=onnx_bytes)
        return engine

    def engine_session(engine):
        import onnxruntime as ort

        s = engine._sti.get("session")
        if s is None:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            s = ort.InferenceSession(engine._sti["onnx"], so, providers=["CPUExecutionProvider"])
            engine._sti["session"] = s
        return s

    def io_names(engine):
        s = engine_session(engine)
        return [i.name for i in s.get_inputs()] + [o.name for o in s.get_outputs()]

    def get_tensor_name(self, index):
        return io_names(self)[index]

    def get_tensor_mode(self, name):
        s = engine_session(self)
        return trt.TensorIOMode.INPUT if name in {i.name for i in s.get_inputs()} else trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        s = engine_session(self)
        for t in [*s.get_inputs(), *s.get_outputs()]:
            if t.name == name:
                return tuple(d if isinstance(d, int) else -1 for d in t.shape)
        raise ValueError(name)

    def get_tensor_dtype(self, name):
        return trt.DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile_index):
        lo, opt, hi = self._sti["header"]["profile"]
        return [tuple(lo), tuple(opt), tuple(hi)]

    def create_context(self):
        ctx = trt.IExecutionContext()
        ctx._sti.update(engine=self, shape=None, addresses={})
        return ctx

    def create_inspector(self):
        insp = trt.EngineInspector()
        insp._sti["engine"] = self
        return insp

    def get_engine_information(self, format):  # noqa: A002 - TensorRT's name
        engine = self._sti["engine"]
        model = onnx.load_from_string(engine._sti["onnx"])
        produced_by_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        layers = []
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            int8 = n.op_type == "Conv" and n.input[0] in produced_by_dq
            dtype = "Int8" if int8 else ("Half" if engine._sti["header"]["fp16"] else "Float")
            # Each major's schema: 10.x "Format/Datatype" and "Bindings"; 11.x splits the type from the
            # format ("DataType", as NVIDIA's 10.x -> 11.x migration page writes it) and says "I/O Tensors".
            eleven = _v(m.version)[0] >= 11
            io = {"Name": n.output[0], **({"DataType": dtype, "Format": "NCHW"} if eleven else {"Format/Datatype": f"{dtype} NCHW"})}
            layers.append({"Name": n.name, "LayerType": n.op_type, "Inputs": [io], "Outputs": [io]})
        return json.dumps({"Layers": layers, ("I/O Tensors" if _v(m.version)[0] >= 11 else "Bindings"): io_names(engine)})

    def ctx_set_input_shape(self, name, shape):
        lo, _, hi = self._sti["engine"]._sti["header"]["profile"]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self._sti["shape"] = tuple(shape)
        return True

    def ctx_get_tensor_shape(self, name):
        engine, shape = self._sti["engine"], self._sti["shape"]
        s = engine_session(engine)
        if name == s.get_inputs()[0].name:
            return shape
        out = next(o for o in s.get_outputs() if o.name == name)
        return (shape[0], *[d if isinstance(d, int) else -1 for d in out.shape[1:]])

    def ctx_set_address(self, name, memory):
        self._sti["addresses"][name] = memory
        return True

    def ctx_execute(self, stream_handle):
        cuda = sys.modules["polygraphy.cuda"]
        memory = cuda.MEMORY
        engine = self._sti["engine"]
        s = engine_session(engine)
        names = io_names(engine)
        if set(self._sti["addresses"]) != set(names) or self._sti["shape"] is None:
            return False
        in_name = s.get_inputs()[0].name
        n = int(np.prod(self._sti["shape"])) * 4
        x = np.frombuffer(bytes(memory[self._sti["addresses"][in_name]][:n]), np.float32).reshape(self._sti["shape"])
        for out, y in zip([o.name for o in s.get_outputs()], s.run(None, {in_name: x})):
            y = np.ascontiguousarray(y, np.float32)
            memory[self._sti["addresses"][out]][: y.nbytes] = y.tobytes()
        return True

    def nptype(t):
        table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                 "BOOL": np.bool_, "UINT8": np.uint8}
        if t.name not in table:
            raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {t}")
        return table[t.name]

    def parser_error_str(self):
        return self._sti["text"]

    behaviour: dict[str, Any] = {
        "nptype": nptype, "init_libnvinfer_plugins": lambda logger, ns: True,
        "Logger.__init__": logger_init, "Logger.log": logger_log, "ILogger.__init__": ilogger_init,
        "Builder.__init__": builder_init, "Builder.create_network": create_network,
        "Builder.create_builder_config": create_builder_config, "Builder.create_optimization_profile": create_optimization_profile,
        "Builder.build_serialized_network": build_serialized_network, "Builder.is_network_supported": lambda self, n, c: True,
        "Builder.num_DLA_cores=default": lambda: m.dla_cores, "Builder.platform_has_fast_int8=default": lambda: True,
        "Builder.platform_has_fast_fp16=default": lambda: True, "Builder.platform_has_tf32=default": lambda: True,
        "OnnxParser.__init__": parser_init, "OnnxParser.parse_from_file": parse_from_file, "OnnxParser.parse": parse,
        "OnnxParser.get_error": lambda self, index: self._sti["errors"][index], "OnnxParser.clear_errors": lambda self: self._sti["errors"].clear(),
        "ParserError.__str__": parser_error_str, "ParserError.desc": parser_error_str,
        "ParserError.code": lambda self: 0, "ParserError.node_name": lambda self: "",
        "INetworkDefinition.get_input": get_input, "INetworkDefinition.__len__": net_len,
        "INetworkDefinition.__getitem__": net_getitem, "INetworkDefinition.get_layer": net_getitem,
        "INetworkDefinition.get_flag": net_get_flag,
        "IOptimizationProfile.set_shape": profile_set_shape, "IOptimizationProfile.get_shape": profile_get_shape,
        "IOptimizationProfile.__bool__": profile_bool, "IOptimizationProfile.__nonzero__": profile_bool,
        "IBuilderConfig.set_flag": set_flag, "IBuilderConfig.clear_flag": clear_flag, "IBuilderConfig.get_flag": get_flag,
        "IBuilderConfig.set_memory_pool_limit": set_pool, "IBuilderConfig.get_memory_pool_limit": get_pool,
        "IBuilderConfig.add_optimization_profile": add_profile,
        "IBuilderConfig.set_calibration_profile": set_calibration_profile,
        "IBuilderConfig.get_calibration_profile": get_calibration_profile,
        "IBuilderConfig.create_timing_cache": create_timing_cache, "IBuilderConfig.set_timing_cache": set_timing_cache,
        "IBuilderConfig.get_timing_cache": get_timing_cache, "IBuilderConfig.get_tactic_sources": zero,
        "IBuilderConfig.get_preview_feature": false, "IBuilderConfig.set_preview_feature": lambda self, f, on: None,
        "IBuilderConfig.get_quantization_flag": false,
        "IBuilderConfig.DLA_core=default": lambda: -1,
        "IBuilderConfig.default_device_type=default": lambda: trt.DeviceType.GPU,
        "IBuilderConfig.profiling_verbosity=default": lambda: trt.ProfilingVerbosity.LAYER_NAMES_ONLY,
        "IBuilderConfig.hardware_compatibility_level=default": lambda: trt.HardwareCompatibilityLevel.NONE,
        "IBuilderConfig.engine_capability=default": lambda: trt.EngineCapability.STANDARD,
        "IBuilderConfig.builder_optimization_level=default": lambda: 3,
        "ITimingCache.combine": cache_combine, "ITimingCache.serialize": cache_serialize,
        "IHostMemory@base": bytes, "IHostMemory.__enter__": mem_enter, "IHostMemory.__exit__": mem_exit,
        "Runtime.__init__": runtime_init, "Runtime.deserialize_cuda_engine": deserialize,
        "Runtime.engine_host_code_allowed=default": lambda: False,
        "Runtime.DLA_core=default": lambda: 0,
        # The concrete calibrators' get_algorithm is C++ in the bindings: it names the algorithm (as the real 10.x ones do).
        "IInt8LegacyCalibrator.get_algorithm": lambda self: trt.CalibrationAlgoType.LEGACY_CALIBRATION,
        "IInt8EntropyCalibrator.get_algorithm": lambda self: trt.CalibrationAlgoType.ENTROPY_CALIBRATION,
        "IInt8EntropyCalibrator2.get_algorithm": lambda self: trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2,
        "IInt8MinMaxCalibrator.get_algorithm": lambda self: trt.CalibrationAlgoType.MINMAX_CALIBRATION,
        "ICudaEngine.get_tensor_name": get_tensor_name, "ICudaEngine.get_tensor_mode": get_tensor_mode,
        "ICudaEngine.get_tensor_shape": get_tensor_shape, "ICudaEngine.get_tensor_dtype": get_tensor_dtype,
        "ICudaEngine.get_tensor_profile_shape": get_tensor_profile_shape,
        "ICudaEngine.create_execution_context": create_context, "ICudaEngine.create_engine_inspector": create_inspector,
        "EngineInspector.get_engine_information": get_engine_information,
        "IExecutionContext.set_input_shape": ctx_set_input_shape, "IExecutionContext.get_tensor_shape": ctx_get_tensor_shape,
        "IExecutionContext.set_tensor_address": ctx_set_address, "IExecutionContext.execute_async_v3": ctx_execute,
    }
    trt = make_tensorrt(m.version, behaviour)
    # Read-only values computed from state (pybind properties without setters).
    _computed(trt, "INetworkDefinition", "num_inputs", lambda self: len(self._sti["inputs"]))
    _computed(trt, "INetworkDefinition", "num_layers", lambda self: len(self._sti["layers"]))
    _computed(trt, "INetworkDefinition", "num_outputs", lambda self: len(self._sti["outputs"]))
    _computed(trt, "OnnxParser", "num_errors", lambda self: len(self._sti["errors"]))
    _computed(trt, "IBuilderConfig", "num_optimization_profiles", lambda self: len(self._sti["profiles"]))
    _computed(trt, "ICudaEngine", "num_io_tensors", lambda self: len(io_names(self)))
    _computed(trt, "ITensor", "name", lambda self: self._sti["name"])
    _computed(trt, "ITensor", "shape", lambda self: self._sti["shape"])
    _computed(trt, "ITensor", "dtype", lambda self: self._sti["dtype"])
    _computed(trt, "ITensor", "is_shape_tensor", lambda self: self._sti["is_shape_tensor"])
    _computed(trt, "ILayer", "name", lambda self: self._sti["name"])
    _computed(trt, "ILayer", "type", lambda self: self._sti["type"])
    _computed(trt, "IHostMemory", "nbytes", lambda self: len(self))
    m.trt = trt
    return trt


def _computed(trt: Any, cls: str, name: str, getter: Any) -> None:
    klass = getattr(trt, cls, None)
    if klass is None or name not in klass._trt_props:
        return  # this version has no such member: it stays absent
    original = klass.__getattr__

    def __getattr__(self, attr, _name=name, _getter=getter, _original=original):
        if attr == _name and attr not in self._state():
            return _getter(self)
        return _original(self, attr)

    klass.__getattr__ = __getattr__


def fake_cuda() -> Any:
    """polygraphy.cuda with device memory as host bytearrays keyed by fake pointers."""
    import itertools
    import types

    from polygraphy.datatype import DataType

    module = types.ModuleType("polygraphy.cuda")
    module.MEMORY, module.STREAMS = {}, set()
    module.SYNCS = [0]
    ids = itertools.count(0x1000, 0x1000)

    class Stream:
        def __init__(self):
            self.ptr = next(ids)
            module.STREAMS.add(self.ptr)

        def synchronize(self):
            module.SYNCS[0] += 1

        def free(self):
            module.STREAMS.discard(self.ptr)

    class DeviceArray:
        def __init__(self, shape=None, dtype=None):
            self.np_dtype = np.dtype(DataType.to_dtype(dtype, "numpy"))
            self.ptr, self.allocated, self.shape = 0, 0, ()
            self.resize(shape)

        @property
        def nbytes(self):
            return int(np.prod(self.shape)) * self.np_dtype.itemsize

        def resize(self, shape):
            self.shape = tuple(shape)
            if self.nbytes > self.allocated:
                self.free()
                self.ptr, self.allocated = next(ids), self.nbytes
                module.MEMORY[self.ptr] = bytearray(self.nbytes)
                self.shape = tuple(shape)
            return self

        def free(self):
            module.MEMORY.pop(self.ptr, None)
            self.ptr, self.allocated, self.shape = 0, 0, ()

        def copy_from(self, host, stream=None):
            assert host.dtype == self.np_dtype and host.flags.c_contiguous and host.nbytes <= self.nbytes
            module.MEMORY[self.ptr][: host.nbytes] = host.tobytes()
            return self

        def copy_to(self, host, stream=None):
            assert host.nbytes >= self.nbytes
            host[...] = np.frombuffer(bytes(module.MEMORY[self.ptr][: self.nbytes]), self.np_dtype).reshape(host.shape)
            return host

    module.Stream, module.DeviceArray = Stream, DeviceArray
    return module


def install(monkeypatch: Any, machine: Machine) -> Any:
    """Make ``machine`` this process's TensorRT and GPU: sys.modules["tensorrt"] is its stand-in,
    polygraphy.cuda a fake, rescompile.nvidia sees its GPU, and Polygraphy forgets any tensorrt
    module it imported before. Returns the stand-in module."""
    from rescompile import nvidia

    trt = tensorrt_for(machine)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "polygraphy.cuda", fake_cuda())
    gpu = nvidia.GpuInfo(machine.gpu_name, machine.compute_capability, jetson=machine.jetson)
    monkeypatch.setattr(nvidia, "find_gpu", lambda: gpu)
    monkeypatch.setattr(_FORGET, "machine", machine)  # Polygraphy forgets tensorrt now, and again on undo
    return trt


def _forget_polygraphy_tensorrt() -> None:
    """Polygraphy's lazy `trt` modules cache what they imported first: make them import again."""
    for name, module in list(sys.modules.items()):
        lazy = getattr(module, "trt", None) if name.startswith("polygraphy.") else None
        if type(lazy).__name__ == "LazyModule":
            object.__setattr__(lazy, "module", None)


class _Forget:
    """Setting an attribute (as monkeypatch does on install and on undo) resets Polygraphy's
    tensorrt, so a machine with real TensorRT gets it back after a stand-in test."""

    def __setattr__(self, name: str, value: Any) -> None:
        _forget_polygraphy_tensorrt()
        object.__setattr__(self, name, value)


_FORGET = _Forget()
object.__setattr__(_FORGET, "machine", None)
