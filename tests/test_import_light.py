"""`import rescompile` and `rescompile --help` work without the optional heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import sys
    class _Block:
        blocked = ("torchvision", "tensorrt", "onnxsim", "polygraphy", "matplotlib")
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"blocked for the test: {name}")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_is_light_and_works_without_optional_deps():
    res = run(
        """
        import rescompile
        assert rescompile.__version__
        heavy = [m for m in ("torch", "onnx", "onnxruntime", "torchvision", "tensorrt") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def test_cli_help_works_without_optional_deps_and_without_torch():
    res = run(
        """
        sys.argv = ["rescompile", "--help"]
        from rescompile.cli import app
        try:
            app()
        except SystemExit as e:
            assert e.code == 0, e.code
        assert "torch" not in sys.modules, "help must not import torch"
        """
    )
    assert res.returncode == 0, res.stderr
    for command in ("train", "export", "optimize", "inspect", "calibrate", "build", "bench", "predict", "compare", "models"):
        assert command in res.stdout


def test_missing_onnxsim_falls_back_with_a_note(tmp_path):
    res = run(
        f"""
        from rescompile.models.load import load_model
        from rescompile.stages.export import onnx_from_torch
        m = load_model("resnet20")
        r = onnx_from_torch(m.module, m.spec, {str(tmp_path / 'm.onnx')!r})
        assert not r.simplified and "onnxsim not installed" in r.simplify_note, r
        assert r.check.passed
        print("OK")
        """
    )
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


def test_torchvision_arch_without_torchvision_names_the_extra():
    res = run(
        """
        from rescompile.errors import MissingDependencyError
        from rescompile.models.registry import create_model
        try:
            create_model("resnet18")
        except MissingDependencyError as e:
            print("MSG", e)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "rescompile[vision]" in res.stdout
