"""The store's JSON codec gives exactly what the standard library's json gives."""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphdriver import jsonio

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(values)
def test_dumps_matches_json(value):
    assert jsonio.dumps(value) == json.dumps(value)
    assert jsonio.dumps(value, compact=True) == json.dumps(value, separators=(",", ":"))
    assert jsonio.dumps(value, indent=2) == json.dumps(value, indent=2)


@settings(max_examples=300)
@given(values, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_loads_matches_json(value, space):
    text = space + json.dumps(value, indent=None if len(space) % 2 else 2) + space
    assert jsonio.loads(text) == json.loads(text)
    assert jsonio.loads(text.encode()) == json.loads(text)


def test_non_string_keys_and_constants_as_json_writes_them():
    value = {1: "a", False: "b", None: [float("inf")], 2.5: {}}
    assert jsonio.dumps(value, indent=2) == json.dumps(value, indent=2)
    assert jsonio.dumps(value) == json.dumps(value)
    assert math.isnan(jsonio.loads("NaN"))


@pytest.mark.parametrize("text", ["", "   ", "{", '{"a": 1} x', "[1,]", "tru", '"\x01"', b"\xff"])
def test_malformed_is_value_error(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonio.loads(text)


def test_unencodable_is_type_error():
    with pytest.raises(TypeError):
        jsonio.dumps({"a": object()})
    with pytest.raises(TypeError):
        jsonio.dumps({"a": object()}, indent=2)


def test_malformed_input_is_a_value_error_in_a_fresh_interpreter():
    """_json reports errors through json.decoder only if that is loaded: it is not, at start-up."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from graphdriver import jsonio\n"
        "for text in ['{\"id\": \"a\", \"creat', '[1,', '{\"a\" 1}', 'x']:\n"
        "    try:\n        jsonio.loads(text)\n    except ValueError:\n        pass\n"
        "    else:\n        raise SystemExit('accepted ' + text)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(ROOT / "src")], check=True)


def test_dumps_writes_what_is_nested_deeper_than_recursion_goes():
    import sys

    deep: dict = {"children": []}
    inner = deep
    for i in range(sys.getrecursionlimit() + 100):
        kid: dict = {"id": i, "children": []}
        inner["children"].append(kid)
        inner = kid
    value = [deep, {"k": (1, None)}, {2: "x"}]
    for compact in (False, True):
        text = jsonio.dumps(value, compact=compact)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit * 4)
        try:
            assert text == json.dumps(value, separators=(",", ":") if compact else None)
        finally:
            sys.setrecursionlimit(limit)


def test_show_gives_text_that_is_not_utf8_lossy_and_its_bytes_beside_it():
    """Command output holds UTF-8 text only: a name read with surrogateescape gets U+FFFD for
    its bytes that are not UTF-8, and in an object ``KEY_raw`` with its bytes in base64."""
    import base64

    path = os.fsdecode(b"/srv/st\xff/vfs")
    value = {"id": "b", "path": path, "names": [path], "nested": {"p": path}, "emoji": "\U0001f600"}
    shown = json.loads(jsonio.show(value))
    lossy = "/srv/st\ufffd/vfs"
    assert shown == {"id": "b", "path": lossy, "path_raw": base64.b64encode(b"/srv/st\xff/vfs").decode(),
                     "names": [lossy], "nested": {"p": lossy, "p_raw": shown["nested"]["p_raw"]},
                     "emoji": "\U0001f600"}
    assert base64.b64decode(shown["nested"]["p_raw"]) == b"/srv/st\xff/vfs"
    assert list(shown) == ["id", "path", "path_raw", "names", "nested", "emoji"]
    plain = {"id": "b", "path": "/srv/st/vfs", "emoji": "\U0001f600"}
    assert jsonio.show(plain) == jsonio.dumps(plain)
    assert jsonio.show(plain, indent=2) == jsonio.dumps(plain, indent=2)
    assert json.loads(jsonio.show(["\ud800"])) == ["?"]  # a surrogate no byte was read as
