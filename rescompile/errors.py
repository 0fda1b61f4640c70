"""Errors raised by rescompile. Every message says what is wrong and how to fix it.

The library raises; only the CLI turns these into a one-line message and an exit code.
"""

from __future__ import annotations


MAX_MESSAGE = 1000


class RescompileError(Exception):
    """Base class: ``str(err)`` is a single line, 'what is wrong: how to fix it'."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message.strip()
        self.hint = hint.strip() if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        text = self.message if not self.hint else f"{self.message}. {self.hint}"
        # One line, whatever the parts contained (paths from users can hold newlines), and
        # bounded: a message may quote a value from a hostile file.
        line = " ".join(text.split())
        return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 20] + " ...(truncated)"


class ConfigError(RescompileError):
    """An option or combination of options that cannot work."""

    exit_code = 2


class MissingDependencyError(RescompileError):
    """An optional dependency is not installed."""


class ModelError(RescompileError):
    """A model source that cannot be loaded or is not a ResNet-like image classifier."""


class DataError(RescompileError):
    """A dataset, image folder or array that cannot be used."""


class TrainError(RescompileError):
    """Training failed (diverged, no data, ...)."""


class ExportError(RescompileError):
    """ONNX export or its check against PyTorch failed."""


class OptimizeError(RescompileError):
    """A graph rewrite would change the model's output."""


class EngineBuildError(RescompileError):
    """TensorRT could not parse the network or build the engine."""
