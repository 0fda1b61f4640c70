"""The README and the guides in docs/: every command they show parses, every link leads somewhere.

Each `rescompile ...` line in a shell block of README.md or docs/*.md is parsed against the real
command line (the subcommand exists, every option it uses exists for that subcommand, the values
fit), without running it. Every relative link points to a file that exists and, for a `#anchor`
into a Markdown file, to a heading of that file. The README stays a front page (250 lines at most)
that opens with the set-up.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest
import typer

try:  # Typer >= 0.24 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on the real click
    from click import exceptions as click_exceptions

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "shell-session"}
OPERATORS = {"&&", "||", ";", "|", "&"}
README_MAX_LINES = 250


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _fenced_blocks(path: Path):
    """(info string, [(line number, text), ...]) for every fenced code block of a Markdown file."""
    blocks, current, info, fence = [], None, "", ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if current is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, info, current = match.group(1), match.group(2).lower(), []
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append((info, current))
            current = None
        else:
            current.append((number, line))
    return blocks


def _shell_lines(lines):
    """Join backslash-continued lines. Yields (first line number, command text).

    In a block that shows prompts (`$ command` followed by its output), only the prompted lines
    are commands; in any other shell block every line is.
    """
    prompted = any(line.lstrip().startswith("$ ") for _, line in lines)
    pending, start = "", 0
    for number, line in lines:
        if not pending:
            start = number
            if prompted and not line.lstrip().startswith("$ "):
                continue  # output
        text = line.rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full = (pending + text).strip()
        pending = ""
        if full.startswith("$ "):
            full = full[2:].strip()
        yield start, full
    if pending.strip():
        yield start, pending.strip()


def _commands(line: str) -> list[list[str]]:
    """Every `rescompile ...` invocation in a shell line (also after `&&`, `;` or `|`), comments stripped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments, current = [], []
    for token in lexer:
        if token in OPERATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return [seg[1:] for seg in segments if seg and seg[0] == "rescompile"]


def documented_commands():
    """(file, line, argv after `rescompile`) for every command shown in a shell block."""
    found = []
    for page in PAGES:
        for info, lines in _fenced_blocks(page):
            if info not in SHELL_BLOCKS:
                continue
            for number, text in _shell_lines(lines):
                if "rescompile" not in text:
                    continue
                try:
                    invocations = _commands(text)
                except ValueError as exc:  # unbalanced quotes
                    found.append((page, number, exc))
                    continue
                found.extend((page, number, argv) for argv in invocations)
    return found


COMMANDS = documented_commands()


def _cli():
    from rescompile.cli import app

    return typer.main.get_command(app)


def _parse_error(group, argv: list[str]) -> str | None:
    """Why argv would not parse as `rescompile ...`, or None. Nothing is run."""
    try:
        root = group.make_context("rescompile", list(argv), resilient_parsing=False)
    except typer.Exit:
        return None  # an eager option such as --version answered
    except click_exceptions.UsageError as exc:
        return f"{type(exc).__name__}: {exc.format_message()}"
    protected = getattr(root, "_protected_args", None)
    if protected is None:  # pragma: no cover - click before 8.2
        protected = getattr(root, "protected_args", [])
    rest = [*protected, *root.args]
    if not rest:
        return "no subcommand"
    name, sub_args = rest[0], rest[1:]
    command = group.commands.get(name) if hasattr(group, "commands") else group.get_command(root, name)
    if command is None:
        return f"no such command: {name!r} (commands: {', '.join(sorted(group.commands))})"
    try:
        command.make_context(name, list(sub_args), parent=root, resilient_parsing=False)
    except typer.Exit:
        return None  # --help
    except click_exceptions.MissingParameter as exc:
        return f"MissingParameter: {exc.format_message()}"
    except click_exceptions.BadParameter as exc:
        # A file that does not exist on this machine is not a parse error; anything else is.
        if "does not exist" in exc.format_message():
            return None
        return f"BadParameter: {exc.format_message()}"
    except click_exceptions.UsageError as exc:
        return f"{type(exc).__name__}: {exc.format_message()}"
    return None


def test_there_are_commands_to_check():
    assert len(COMMANDS) >= 10, "the command extraction found almost nothing: is it still reading the right blocks?"
    assert any(page == README for page, _, _ in COMMANDS)


@pytest.mark.parametrize(
    "page,number,argv", COMMANDS, ids=[f"{_rel(p)}:{n}" for p, n, _ in COMMANDS]
)
def test_documented_command_parses(page, number, argv):
    if isinstance(argv, Exception):
        pytest.fail(f"{_rel(page)}:{number}: cannot split the command: {argv}")
    error = _parse_error(_cli(), argv)
    assert error is None, f"{_rel(page)}:{number}: `rescompile {shlex.join(argv)}` does not parse: {error}"


def test_parser_check_catches_a_wrong_option():
    group = _cli()
    assert _parse_error(group, ["build", "--no-such-option"]) is not None
    assert _parse_error(group, ["no-such-command"]) is not None
    assert _parse_error(group, ["build", "--precision", "int9"]) is not None
    assert _parse_error(group, ["build", "--help"]) is None
    assert _parse_error(group, ["-v", "models"]) is None


def test_documented_python_compiles():
    for page in PAGES:
        for info, lines in _fenced_blocks(page):
            if info in {"python", "py"} and lines:
                source = "\n".join(line for _, line in lines)
                try:
                    compile(source, f"{_rel(page)}:{lines[0][0]}", "exec")
                except SyntaxError as exc:
                    pytest.fail(f"{_rel(page)}:{lines[0][0] + (exc.lineno or 1) - 1}: Python block does not compile: {exc.msg}")


# -- links ------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose_lines(path: Path):
    """(line number, text) outside fenced code, with inline code spans removed."""
    inside, fence = False, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        match = re.match(r"^(`{3,}|~{3,})", stripped)
        if match and (not inside or (stripped.startswith(fence) and stripped.strip(fence[0]) == "")):
            inside, fence = (not inside), match.group(1)
            continue
        if not inside:
            yield number, re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation except '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    kept = "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    inside, fence = False, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        match = re.match(r"^(`{3,}|~{3,})", stripped)
        if match and (not inside or (stripped.startswith(fence) and stripped.strip(fence[0]) == "")):
            inside, fence = (not inside), match.group(1)
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if inside or not heading:
            continue
        slug = github_slug(heading.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    for name in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")):
        result.add(name)
    return result


def test_github_slug():
    assert github_slug("Set-up: two commands") == "set-up-two-commands"
    assert github_slug("Datasets (`--dataset`)") == "datasets---dataset"
    assert github_slug("Runtime for edge apps") == "runtime-for-edge-apps"


def test_relative_links_lead_somewhere():
    broken, checked = [], 0
    for page in PAGES:
        for number, text in _prose_lines(page):
            for target in LINK.findall(text):
                checked += 1
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
                    continue
                path_part, _, anchor = target.partition("#")
                dest = (page.parent / path_part).resolve() if path_part else page
                if not dest.exists():
                    broken.append(f"{_rel(page)}:{number}: {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{_rel(page)}:{number}: {target}: no heading #{anchor} in {dest.name}")
    assert checked >= 20, "the link extraction found almost nothing: is it still reading the pages?"
    assert not broken, "broken links:\n" + "\n".join(broken)


# -- the front page ---------------------------------------------------------------------------------


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move detail into docs/"


def test_readme_opens_with_the_setup():
    text = README.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections and sections[0] == "Set-up: two commands"
    setup = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    assert '```bash\npython3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && rescompile build\n```' in setup
    assert "```bash\npython -m pytest -q\n```" in setup  # the README's test command, which CI runs


def test_docs_tensorrt_table_is_the_plans_own():
    from rescompile.stages.build.plan import support_table

    page = ROOT / "docs" / "tensorrt.md"
    assert support_table() in page.read_text(encoding="utf-8"), (
        "docs/tensorrt.md's TensorRT/device table differs from plan.support_table(): paste it again"
    )
