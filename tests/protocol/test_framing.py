"""Framing: NDJSON and Content-Length, trickled, oversized and garbage input; the connection survives."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_rpc.methods import error_mapper
from llm_rpc.protocol import Dispatcher, FrameError, LspFramer, NdjsonFramer, detect_framer
from tests.protocol._harness import spec_table


def feed_all(framer: NdjsonFramer | LspFramer, data: bytes, chunk: int) -> list[bytes | FrameError]:
    out: list[bytes | FrameError] = []
    for i in range(0, len(data), chunk):
        out.extend(framer.feed(data[i : i + chunk]))
    return out


def test_ndjson_splits_lines_tolerates_crlf_and_skips_blank_lines() -> None:
    framer = NdjsonFramer(1000)
    assert framer.feed(b'{"a":1}\r\n\n  \n[2]\n{"b"') == [b'{"a":1}', b"[2]"]
    assert framer.feed(b":3}\n") == [b'{"b":3}']


def test_ndjson_trickled_one_byte_at_a_time_gives_the_same_frames() -> None:
    data = b'{"a":1}\n{"b":2}\r\n[3]\n'
    assert feed_all(NdjsonFramer(1000), data, 1) == [b'{"a":1}', b'{"b":2}', b"[3]"]


def test_ndjson_oversized_line_is_one_error_and_framing_resumes_at_the_next_newline() -> None:
    limit = 16
    for chunk in (1, 5, 1000):
        framer = NdjsonFramer(limit)
        out = feed_all(framer, b'{"a":"' + b"x" * 100 + b'"}\n{"ok":1}\n', chunk)
        assert len(out) == 2
        assert isinstance(out[0], FrameError)
        assert out[0].code == -32600
        assert out[0].data["limit"] == "max_message_bytes"
        assert out[0].data["max_bytes"] == limit
        assert out[1] == b'{"ok":1}'


def test_ndjson_accepts_a_line_of_exactly_the_limit() -> None:
    line = b'{"k":"' + b"v" * 10 + b'"}'
    assert NdjsonFramer(len(line)).feed(line + b"\n") == [line]


def test_lsp_reads_content_length_bodies_and_ignores_other_headers() -> None:
    body1, body2 = b'{"a":1}', b'{"b":22}'
    data = b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n%s" % (
        len(body1),
        body1,
    ) + b"content-length: %d\r\n\r\n%s" % (len(body2), body2)
    for chunk in (1, 3, 1000):
        assert feed_all(LspFramer(1000), data, chunk) == [body1, body2]


def test_lsp_oversized_body_is_discarded_after_one_error() -> None:
    big = b"x" * 50
    ok = b'{"ok":1}'
    data = b"Content-Length: %d\r\n\r\n%s" % (len(big), big) + b"Content-Length: %d\r\n\r\n%s" % (len(ok), ok)
    for chunk in (1, 7, 1000):
        out = feed_all(LspFramer(20), data, chunk)
        assert isinstance(out[0], FrameError)
        assert out[0].data["size"] == 50
        assert out[1:] == [ok]


def test_lsp_header_block_without_a_valid_length_is_an_error_and_the_next_message_is_read() -> None:
    ok = b'{"ok":1}'
    for bad in (b"X-Other: 1\r\n\r\n", b"Content-Length: abc\r\n\r\n"):
        out = LspFramer(100).feed(bad + b"Content-Length: %d\r\n\r\n%s" % (len(ok), ok))
        assert isinstance(out[0], FrameError)
        assert out[0].data["header"] == "Content-Length"
        assert out[1:] == [ok]


def test_framing_is_detected_from_the_first_non_whitespace_byte() -> None:
    assert detect_framer(b"  \n", 10) is None
    assert isinstance(detect_framer(b'\n {"a"', 10), NdjsonFramer)
    assert isinstance(detect_framer(b"[", 10), NdjsonFramer)
    assert isinstance(detect_framer(b"Content-Length: 2", 10), LspFramer)
    assert isinstance(detect_framer(b"garbage", 10), NdjsonFramer)


def test_lsp_replies_are_framed_with_content_length() -> None:
    assert LspFramer(10).encode(b"{}") == b"Content-Length: 2\r\n\r\n{}"
    assert NdjsonFramer(10).encode(b"{}") == b"{}\n"


class _NoTasks:
    """A task group stand-in: the property below only calls inline methods."""

    def start_soon(self, func: Any, *args: Any, **kwargs: Any) -> None:
        return None


def _is_well_formed_reply(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_well_formed_reply(v) for v in value)
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0" or "id" not in value:
        return False
    if ("result" in value) == ("error" in value):
        return False
    if "error" in value:
        error = value["error"]
        return isinstance(error.get("code"), int) and isinstance(error.get("message"), str)
    return True


VALID = b'{"jsonrpc":"2.0","id":"last","method":"subtract","params":[5,3]}'


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=300), chunk=st.integers(min_value=1, max_value=64))
def test_any_bytes_give_only_well_formed_replies_and_the_next_request_is_answered(garbage: bytes, chunk: int) -> None:
    replies: list[bytes] = []
    dispatcher = Dispatcher(spec_table(), error_mapper=error_mapper)
    session = dispatcher.session(_NoTasks(), replies.append, peer="fuzz")  # type: ignore[arg-type]
    framer = NdjsonFramer(128)
    for item in feed_all(framer, garbage + b"\n" + VALID + b"\n", chunk):
        if isinstance(item, bytes):
            session.handle_frame(item)
        else:
            session.handle_frame_error(item)
    decoded = [msgspec.json.decode(r) for r in replies]
    assert all(_is_well_formed_reply(d) for d in decoded)
    assert decoded[-1] == {"jsonrpc": "2.0", "id": "last", "result": 2}


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=32))
def test_any_lsp_body_gives_well_formed_replies_and_the_next_message_is_answered(body: bytes, chunk: int) -> None:
    replies: list[bytes] = []
    dispatcher = Dispatcher(spec_table(), error_mapper=error_mapper)
    session = dispatcher.session(_NoTasks(), replies.append, peer="fuzz")  # type: ignore[arg-type]
    framer = LspFramer(128)
    data = b"Content-Length: %d\r\n\r\n%s" % (len(body), body) + b"Content-Length: %d\r\n\r\n%s" % (
        len(VALID),
        VALID,
    )
    for item in feed_all(framer, data, chunk):
        if isinstance(item, bytes):
            session.handle_frame(item)
        else:
            session.handle_frame_error(item)
    decoded = [msgspec.json.decode(r) for r in replies]
    assert all(_is_well_formed_reply(d) for d in decoded)
    assert decoded[-1] == {"jsonrpc": "2.0", "id": "last", "result": 2}
