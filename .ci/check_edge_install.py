"""Check that the built wheel installs on the edge: resolve it for a Jetson (aarch64, Python 3.10,
glibc <= 2.35) and for an x86-64 GPU server (Python 3.12) with `pip install --dry-run`, and fail
if the base install (or base + [trt,ort], or base + [openvino]) would bring PyTorch, onnxsim,
scikit-learn or any nvidia-* package, naming the requirements that bring each one.
Also checks that the wheel carries the embedded default model with the sha256 its record names.

    python .ci/check_edge_install.py [--wheel-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Never in an edge install: the compile-only packages and the CUDA wheels for servers that PyTorch pulls.
FORBIDDEN = re.compile(r"^(torch|torchvision|triton|onnxsim|scikit-learn|nvidia-.*)$")
TARGETS = [
    # (label, python version, platform tags: one per manylinux tag, as pip matches tags exactly)
    ("jetson aarch64 cp310", "3.10", ["manylinux2014_aarch64", *(f"manylinux_2_{n}_aarch64" for n in range(17, 36))]),
    ("x86-64 cp312", "3.12", ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
                              *(f"manylinux_2_{n}_x86_64" for n in range(5, 36))]),
]
EXTRAS = ["", "[trt,ort]", "[openvino]"]


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)], check=True)
    return next(out.glob("rescompile-*.whl"))


def check_embedded_model(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        record = json.loads(zf.read("rescompile/models/default/resnet20-digits.json"))
        digest = hashlib.sha256(zf.read("rescompile/models/default/" + record["file"])).hexdigest()
    if digest != record["sha256"]:
        raise SystemExit(f"FAIL: the wheel's embedded model hashes to {digest}, its record says {record['sha256']}")
    return f"embedded default model in the wheel: {record['file']}, {record['bytes']} bytes, sha256 {digest[:16]}... ok"


def resolve(wheel: Path, extras: str, python: str, platforms: list[str], scratch: Path) -> list[dict]:
    report = scratch / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--target", str(scratch / "never"),
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--report", str(report)]
    for p in platforms:
        cmd += ["--platform", p]
    done = subprocess.run([*cmd, f"{wheel}{extras}"], capture_output=True, text=True)
    if done.returncode != 0:
        tail = [ln for ln in done.stderr.splitlines() if not ln.startswith("WARNING: Location")][-5:]
        raise SystemExit(f"FAIL: pip could not resolve rescompile{extras} for Python {python} on {platforms[0]}:\n" + "\n".join(tail))
    return json.loads(report.read_text())["install"]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def pulled_by(items: list[dict], python: str, machine: str) -> dict[str, str]:
    """For each package pip would install, the chain of requirements from the wheel that brings it
    ("rescompile[openvino] -> nncf -> scikit-learn"), read from the report's metadata."""
    from packaging.requirements import Requirement

    meta = {_name(i["metadata"]["name"]): i["metadata"] for i in items}
    env = {"python_version": python, "python_full_version": f"{python}.0", "platform_machine": machine}
    root = next(i for i in items if _name(i["metadata"]["name"]) == "rescompile")
    extras = sorted(root.get("requested_extras") or [])
    chains = {"rescompile": "rescompile" + (f"[{','.join(extras)}]" if extras else "")}
    todo = [("rescompile", set(extras))]
    while todo:
        name, wanted = todo.pop(0)
        for text in meta[name].get("requires_dist") or []:
            req = Requirement(text)
            dep = _name(req.name)
            if dep not in meta or dep in chains:
                continue
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)):
                chains[dep] = f"{chains[name]} -> {dep}"
                todo.append((dep, set(req.extras)))
    return chains


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel-dir", type=Path, default=None)
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        wheel = build_wheel(args.wheel_dir or scratch / "dist")
        print(f"wheel: {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB)")
        print(check_embedded_model(wheel))
        for label, python, platforms in TARGETS:
            for extras in EXTRAS:
                items = resolve(wheel, extras, python, platforms, scratch)
                found = sorted((_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in items)
                bad = [(n, v) for n, v in found if FORBIDDEN.match(n)]
                status = "FAIL" if bad else "ok"
                failures += bool(bad)
                print(f"{status}: rescompile{extras or ''} on {label} resolves to {len(found)} packages: "
                      + ", ".join(f"{n}=={v}" for n, v in found))
                if bad:
                    chains = pulled_by(items, python, platforms[0].split("_", 1)[1])  # manylinux2014_aarch64: aarch64
                    print("      forbidden on the edge: " + ", ".join(f"{n}=={v} ({chains.get(n, 'from an unknown requirement')})"
                                                                   for n, v in bad))
    print("edge install check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
