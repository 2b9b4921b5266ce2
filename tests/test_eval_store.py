"""The eval's append-only JSONL store keeps any text a model or a predictions file gives (red-team F18)."""

from __future__ import annotations

from rustcoder.eval.store import JsonlStore, as_text


def test_a_lone_surrogate_is_stored_as_a_replacement_character(tmp_path):
    store = JsonlStore(tmp_path / "samples.jsonl")
    store.append([{"key": "a", "answer": "fn f() {} // \ud800 and \udfff"}, {"key": "b", "answer": "ok \U0001F600"}])
    loaded = store.load()
    assert loaded["a"]["answer"] == "fn f() {} // \ufffd and \ufffd"
    assert loaded["b"]["answer"] == "ok \U0001F600"  # a real astral character is kept as it is
    assert as_text("plain") == "plain"


def test_a_file_with_bytes_that_are_not_utf8_still_loads(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a", "answer": "x"}\n{"key": "b", "answer": "\xed\xa0\x80"}\n')
    loaded = JsonlStore(path).load()
    assert loaded["a"]["answer"] == "x" and "\ufffd" in loaded["b"]["answer"]
