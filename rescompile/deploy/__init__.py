"""Configuration files that hand a bundle to serving frameworks (DeepStream, Triton)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def deepstream_approximation(accuracy_path: Path | None) -> dict[str, Any] | None:
    """What the build measured of DeepStream's single-scale preprocessing (accuracy.json), or None."""
    if accuracy_path is None or not accuracy_path.is_file():
        return None
    try:
        return json.loads(accuracy_path.read_text()).get("deepstream_preprocessing")
    except (OSError, ValueError):
        return None


def write_deploy(out: Path, doc: dict[str, Any], files: dict[str, Path], name: str | None = None) -> dict[str, str]:
    """deploy/deepstream and deploy/triton for the bundle being written in ``out`` (``name``: the
    bundle's final directory name, for Triton's model name); returns {what: path relative to out}."""
    from rescompile.deploy.deepstream import write_deepstream
    from rescompile.deploy.triton import write_triton

    written = write_deepstream(out, doc, files, deepstream_approximation(files.get("accuracy")), name=name)
    config = write_triton(out, doc, files, name=name)
    paths = {**written, "triton_config": config}
    return {k: str(Path(v).relative_to(out)) for k, v in paths.items()}
