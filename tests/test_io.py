"""rescompile._io: bounded JSON reading, the same on every Python version."""

from __future__ import annotations

import json

import pytest

from rescompile._io import MAX_JSON_DEPTH, json_depth, loads_json


@pytest.mark.parametrize("text, depth", [
    ("{}", 1), ("[]", 1), ("1", 0), ('{"a": [1, {"b": []}]}', 4),
    ('{"a": "[[[[{{{{"}', 1),  # brackets inside strings do not count
    ('["\\"[[[", [[]]]', 3),  # nor after an escaped quote inside a string
])
def test_json_depth_counts_only_structure(text, depth):
    assert json_depth(text.encode()) == depth


def test_loads_json_reads_up_to_the_limit_and_refuses_beyond_it():
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_json(at_limit) == json.loads(at_limit)
    assert loads_json(at_limit.encode()) == json.loads(at_limit)
    too_deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(ValueError, match=f"more than the {MAX_JSON_DEPTH}"):
        loads_json(too_deep)


@pytest.mark.parametrize("depth", [1_000, 100_000, 1_000_000])
def test_very_deep_text_is_a_value_error_never_a_recursion_error(depth):
    # json's own give-up depth differs between Python 3.11 and 3.12+; ours does not.
    with pytest.raises(ValueError, match="levels deep"):
        loads_json("[" * depth + "]" * depth)
    with pytest.raises(ValueError, match="levels deep"):
        loads_json('{"a": ' * depth + "1" + "}" * depth)


def test_invalid_json_is_still_a_value_error():
    with pytest.raises(ValueError):
        loads_json('{"a": ')
    with pytest.raises(ValueError):
        loads_json(b"\xff\xfe")
