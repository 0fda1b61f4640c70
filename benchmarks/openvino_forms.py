"""Which Q/DQ form of one bundle's scales OpenVINO runs fastest, beside ONNX Runtime and NNCF.

For a bundle built by `rescompile build --precision int8`, every form is written from its
scales.json (the same amax values) and timed side by side in one process, in alternating rounds:

- on OpenVINO: the CPU artifact (uint8 around 128 for signed tensors, int32 biases), the TensorRT
  Q/DQ ONNX, the pixel-input CPU artifact, the OpenVINO form the build writes (signed tensors int8
  around 0, float biases), the two single changes between them, NNCF's default `quantize` of the
  optimized ONNX on the same calibration images, and FP32;
- on ONNX Runtime: the CPU artifact, its pixel-input twin, the OpenVINO form and `quantize_static`.

    python benchmarks/openvino_forms.py BUNDLE [BUNDLE ...] [--batch 1] [--threads 2] [--layers]
    python benchmarks/without_vnni.py -- python benchmarks/openvino_forms.py BUNDLE
    python benchmarks/without_vnni.py --isa avx512-vnni -- python benchmarks/openvino_forms.py BUNDLE --layers

Prints one table per bundle (p50 ms, fastest first) with the CPU model and its flags. With
``--layers``, also OpenVINO's own per-layer profile (PERF_COUNT) of the OpenVINO form and of NNCF's
model, by layer type and kernel, and the most any Q/DQ form can gain over NNCF while OpenVINO runs
the same convolutions: NNCF's p50 over (its p50 less the time of its layers that are not
convolutions or fully connected), as if those layers took no time at all.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def forms(bundle: Path, scratch: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(files to run on OpenVINO, files to run on ONNX Runtime), by label."""
    import json

    import onnx

    from rescompile.bench.peers import calibration_set, nncf_quantize, ort_quantize_static
    from rescompile.bundle import read_manifest
    from rescompile.stages.calibrate.qdq import has_vnni, qdq_for_cpu
    from rescompile.stages.calibrate.stage import save_model

    man = read_manifest(bundle)
    fp32 = onnx.load(str(man.file("optimized_onnx")))
    tensors = json.loads(man.file("scales").read_text())["tensors"]
    amax = {t: v["amax"] for t, v in tensors.items()}
    tmin = {t: v["min"] for t, v in tensors.items() if "min" in v}
    changes = {
        "int8 signed, int32 bias": dict(symmetric=True),
        "uint8 signed, float bias": dict(int_bias=False),
        "int8 signed, float bias": dict(symmetric=True, int_bias=False),
    }
    made = {k: save_model(qdq_for_cpu(fp32, amax, tmin, reduce_range=False, **kw), scratch / f"form{i}.onnx")
            for i, (k, kw) in enumerate(changes.items())}
    images, _ = calibration_set(man)
    if images is None:
        raise SystemExit(f"{bundle}: its calibration images cannot be loaded here, so the peers cannot be made")
    ov = {"FP32 (optimized ONNX)": man.file("optimized_onnx"), "CPU artifact": man.file("cpu_int8_onnx"),
          "TensorRT Q/DQ": man.file("qdq_onnx"), **made}
    if man.has("cpu_int8_pixels_onnx"):
        ov["CPU artifact, pixels in"] = man.file("cpu_int8_pixels_onnx")
    if man.has("openvino_int8_onnx"):
        ov["OpenVINO form (bundle)"] = man.file("openvino_int8_onnx")
    ov["NNCF quantize"] = nncf_quantize(man.file("optimized_onnx"), scratch / "nncf.onnx", man.spec, images)
    ort = {"CPU artifact": man.file("cpu_int8_onnx"), "int8 signed, float bias": made["int8 signed, float bias"],
           "quantize_static": ort_quantize_static(man.file("optimized_onnx"), scratch / "qstatic.onnx", man.spec, images,
                                                  reduce_range=not has_vnni())}
    if man.has("cpu_int8_pixels_onnx"):
        ort["CPU artifact, pixels in"] = man.file("cpu_int8_pixels_onnx")
    return ov, ort


def _input(dtype_is_uint8: bool, dims: list[int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, dims, dtype=np.uint8) if dtype_is_uint8 else rng.standard_normal(dims).astype(np.float32)


def time_all(ov_files: dict[str, Path], ort_files: dict[str, Path], batch: int, threads: int, rounds: int = 7) -> dict[str, float]:
    import onnxruntime as ort
    import openvino

    core = openvino.Core()
    calls = {}
    for label, path in ov_files.items():
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
        port = compiled.input(0)
        dims = [batch] + [d.get_length() for d in list(port.get_partial_shape())[1:]]
        request, x = compiled.create_infer_request(), _input(port.get_element_type().get_type_name() == "u8", dims)
        calls[f"OpenVINO: {label}"] = (lambda r=request, x=x: r.infer({0: x}))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    for label, path in ort_files.items():
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = _input("uint8" in inp.type, [batch, *inp.shape[1:]])
        calls[f"ONNX Runtime: {label}"] = (lambda s=sess, n=inp.name, x=x: s.run(None, {n: x}))
    for call in calls.values():  # warm up
        for _ in range(10):
            call()
    runs = 40 if batch == 1 else 10
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                call()
                samples[label].append((time.perf_counter() - t0) * 1000.0)
    return {k: float(np.median(v)) for k, v in samples.items()}


ARITHMETIC = ("Convolution", "FullyConnected")  # OpenVINO layer types (prefixes) that carry the multiply-accumulates


def layer_profiles(files: dict[str, Path], batch: int, threads: int, rounds: int = 10, runs: int = 20) -> dict[str, dict[tuple[str, str], float]]:
    """Per file: the median ms per inference of each (layer type, kernel) OpenVINO executes, from its
    own profiler, the files profiled in alternating rounds (as the p50s are timed)."""
    import openvino

    core, requests = openvino.Core(), {}
    for label, path in files.items():
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
        port = compiled.input(0)
        x = _input(port.get_element_type().get_type_name() == "u8", [batch] + [d.get_length() for d in list(port.get_partial_shape())[1:]])
        requests[label] = (compiled.create_infer_request(), x)
        for _ in range(20):
            requests[label][0].infer({0: x})
    samples: dict[str, dict[tuple[str, str], list[float]]] = {k: {} for k in files}
    for _ in range(rounds):
        for label, (request, x) in requests.items():
            for _ in range(runs):
                request.infer({0: x})
                per_kind: dict[tuple[str, str], float] = {}
                for layer in request.get_profiling_info():
                    if layer.status.name == "EXECUTED":
                        key = (layer.node_type, layer.exec_type)
                        per_kind[key] = per_kind.get(key, 0.0) + layer.real_time.total_seconds() * 1000.0
                for key, ms in per_kind.items():
                    samples[label].setdefault(key, []).append(ms)
    return {label: {k: float(np.median(v)) for k, v in kinds.items()} for label, kinds in samples.items()}


def layers_table(profiles: dict[str, dict[tuple[str, str], float]]) -> str:
    labels = list(profiles)
    kinds = sorted({k for p in profiles.values() for k in p}, key=lambda k: -max(p.get(k, 0.0) for p in profiles.values()))
    lines = [f"| layer type (kernel) | {' | '.join(labels)} |", "|---|" + "---|" * len(labels)]
    for kind in kinds:
        lines.append(f"| {kind[0]} ({kind[1]}) | " + " | ".join(f"{p[kind]:.3f}" if kind in p else "-" for p in profiles.values()) + " |")
    for name, keep in (("convolutions and fully connected", True), ("every other layer", False)):
        lines.append(f"| **{name}** | " + " | ".join(f"{sum(v for k, v in p.items() if k[0].startswith(ARITHMETIC) == keep):.3f}"
                                                      for p in profiles.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", action="store_true", help="add OpenVINO's per-layer profile of the OpenVINO form and NNCF's model")
    args = ap.parse_args(argv)
    import openvino

    from rescompile.bench.env import cpu_model, describe_cpu_flags, environment

    print(f"CPU: {cpu_model()} ({describe_cpu_flags(environment(args.threads))}); {args.threads} threads, batch {args.batch}; "
          f"OpenVINO {openvino.get_version().split('-')[0]}")
    for bundle in args.bundles:
        with tempfile.TemporaryDirectory(prefix="ov-forms-") as tmp:
            ov_files, ort_files = forms(bundle, Path(tmp))
            p50 = time_all(ov_files, ort_files, args.batch, args.threads)
            profiles = layer_profiles({k: ov_files[k] for k in ("OpenVINO form (bundle)", "NNCF quantize") if k in ov_files},
                                      args.batch, args.threads) if args.layers else {}
        print(f"\n{bundle}\n\n| runtime: model | p50 ms |\n|---|---|")
        for label, ms in sorted(p50.items(), key=lambda kv: kv[1]):
            print(f"| {label} | {ms:.3f} |")
        if profiles:
            print(f"\nOpenVINO's per-layer profile, ms per inference (median of 200, in alternating rounds):\n\n{layers_table(profiles)}")
            peer = p50["OpenVINO: NNCF quantize"]
            other = sum(v for k, v in profiles["NNCF quantize"].items() if not k[0].startswith(ARITHMETIC))
            print(f"\nNNCF + OpenVINO: p50 {peer:.3f} ms, of which {other:.3f} ms in layers that are not convolutions or fully "
                  f"connected. A form whose convolutions OpenVINO runs as fast as NNCF's, and whose other layers took no time, "
                  f"would be at most {peer / (peer - other):.2f}x NNCF + OpenVINO.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
