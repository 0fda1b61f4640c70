"""--help of every command: options grouped in panels, short, the same words for a shared option, nothing
left over from rendering (a lone period, a <bool> beside a flag)."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
import typer
from typer.testing import CliRunner

from rescompile.cli import app

runner = CliRunner()
GROUP = typer.main.get_command(app)
COMMANDS = list(GROUP.commands)
MAX_LINES = 80  # at COLUMNS=100
LONGER: dict[str, str] = {}  # command -> why its help may run longer than MAX_LINES (none does)

# Same option name, different meaning: each reads as what it does in its command.
MEANS_OTHER_THINGS = {
    "arch": "train names the architecture to train; elsewhere it reads a plain state-dict checkpoint",
    "input_size": "train and compare resize the training images; elsewhere it gives the size a model file leaves out",
    "batch_size": "a training step in train and compare, a calibration batch in build and calibrate",
    "model": "optimize and inspect take only an ONNX file",
    "bundle": "predict also takes an engine, an ONNX file or a checkpoint",
}


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def panel_titles(text: str) -> list[str]:
    return re.findall(r"╭─ (.+?) ─", text)


def content(line: str) -> str:
    """A help line without the panel border."""
    return line.strip().strip("│").strip()


ALL = [(), *((c,) for c in COMMANDS)]
IDS = ["rescompile", *COMMANDS]


def test_every_command_is_checked():
    assert {"build", "calibrate", "bench", "train", "predict"} <= set(COMMANDS)


def test_build_groups_its_options_in_panels():
    titles = panel_titles(help_of("build"))
    assert {"Model", "Output", "Data and preprocessing", "Calibration", "TensorRT engine"} <= set(titles), titles
    assert "Options" not in titles  # nothing left ungrouped
    assert len([t for t in titles if t != "Arguments"]) >= 4


@pytest.mark.parametrize("command", ["calibrate", "bench", "train", "compare", "export"])
def test_commands_with_many_options_group_them(command):
    titles = [t for t in panel_titles(help_of(command)) if t != "Arguments"]
    assert len(titles) >= 3 and "Options" not in titles, titles


@pytest.mark.parametrize("command", ALL, ids=IDS)
def test_no_stray_period(command):
    for line in help_of(*command).splitlines():
        text = content(line)
        assert text != "." and not text.endswith(" .") and not re.search(r"(^|\s)\.(\s|$)", text), line


@pytest.mark.parametrize("command", ALL, ids=IDS)
def test_flags_show_no_value_placeholder(command):
    text = help_of(*command)
    assert "<bool>" not in text and "BOOLEAN" not in text


def test_negatable_flags_show_their_off_form():
    text = help_of("build")
    assert "--[no-]bench" in text and "--[no-]fallback" in text  # on by default: --no-bench is what one types
    assert "--retrain " in text and "--no-retrain" not in text  # off by default: just the flag


@pytest.mark.parametrize("command", ALL, ids=IDS)
def test_help_fits_a_screen(command):
    lines = help_of(*command).rstrip("\n").splitlines()
    name = command[0] if command else "rescompile"
    assert len(lines) < MAX_LINES or name in LONGER, f"{name} --help is {len(lines)} lines"


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_close_the_help(command):
    lines = [content(line) for line in help_of(command).rstrip().splitlines()]
    start = next(i for i, line in enumerate(lines) if line in ("Example:", "Examples:"))
    assert not any(line.startswith("╭") for line in lines[start:])  # no panel after the examples
    assert any(line.startswith(f"rescompile {command}") for line in lines[start + 1:])


def test_defaults_and_brackets_are_shown_not_swallowed():
    text = " ".join(help_of("build").split())
    assert "[default: the model's training data]" in text  # a described default, as show_default gives it
    assert "[default: <home>/builds/<model>]" in text
    assert "[default: 512]" in text


def _helps(commands: list[str]) -> dict[str, dict[str, str]]:
    """Parameter name -> {command: help}, for parameters in more than one of the commands."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for name in commands:
        command = GROUP.commands[name]
        for param in command.params:
            found[param.name][name] = param.help or ""
    return {p: by_command for p, by_command in found.items() if len(by_command) > 1}


def test_build_calibrate_and_bench_say_the_same_for_a_shared_option():
    shared = _helps(["build", "calibrate", "bench"])
    assert {"eval_data", "output_dir", "json_out", "method", "mean", "model"} <= set(shared)
    for param, by_command in shared.items():
        assert len(set(by_command.values())) == 1, f"{param}: {by_command}"


def test_every_command_says_the_same_for_a_shared_option():
    for param, by_command in _helps(COMMANDS).items():
        if param in MEANS_OTHER_THINGS:
            continue
        assert len(set(by_command.values())) == 1, f"{param}: {by_command}"


def test_root_help_says_the_default_build_loads_the_shipped_model():
    text = " ".join(help_of().split())
    assert "loads the ResNet-20 shipped trained" in text and "--retrain trains it" in text
    assert "trains the embedded default" not in text and "to train the embedded default" not in text
