"""Fixtures for the tests against NVIDIA's real TensorRT bindings (see bindings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trt_bindings.bindings import (
    SELECT_ENV, RealBindings, Release, Unavailable, prepare, run_probe, selected, standin_env,
)


class Bindings:
    """Prepares releases on first use (download, unpack, stub) and runs probes against them.
    A release this machine cannot prepare skips the tests that need it, saying why."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._prepared: dict[str, RealBindings | str] = {}
        self._results: dict[tuple, Any] = {}

    def get(self, release: Release) -> RealBindings:
        if not selected(release):
            pytest.skip(f"TensorRT {release.version} is not among {SELECT_ENV}")
        if release.version not in self._prepared:
            try:
                self._prepared[release.version] = prepare(release)
            except Unavailable as exc:
                self._prepared[release.version] = str(exc)
        found = self._prepared[release.version]
        if isinstance(found, str):
            pytest.skip(f"TensorRT {release.version} bindings unavailable: {found}")
        return found

    def probe(self, release: Release, func: str, *args: Any) -> Any:
        """probes.<func>(*args) with the real bindings of ``release`` as ``tensorrt``."""
        key = ("real", release.version, func, repr(args))
        if key not in self._results:
            env = self.get(release).env()
            self._results[key] = run_probe("real", func, list(args), env=env, cwd=self.workdir)
        return self._results[key]

    def standin_probe(self, release: Release, func: str, *args: Any) -> Any:
        """The same probe with the stand-in of ``release.surface`` reporting ``release.version``."""
        key = ("standin", release.version, func, repr(args))
        if key not in self._results:
            world = f"standin:{release.surface}:{release.version}"
            self._results[key] = run_probe(world, func, list(args), env=standin_env(), cwd=self.workdir)
        return self._results[key]


@pytest.fixture(scope="session")
def trt_bindings(tmp_path_factory) -> Bindings:
    return Bindings(tmp_path_factory.mktemp("trt-bindings"))
