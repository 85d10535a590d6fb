"""Every example of the JSON-RPC 2.0 specification (section 7), answered exactly as specified."""

from __future__ import annotations

from typing import Any

import pytest

from tests.protocol._harness import harness

pytestmark = pytest.mark.anyio

EXAMPLES: list[tuple[str, str, Any]] = [
    (
        "positional params",
        '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
        {"jsonrpc": "2.0", "result": 19, "id": 1},
    ),
    (
        "positional params, reversed",
        '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
        {"jsonrpc": "2.0", "result": -19, "id": 2},
    ),
    (
        "named params",
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
        {"jsonrpc": "2.0", "result": 19, "id": 3},
    ),
    (
        "named params, other order",
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
        {"jsonrpc": "2.0", "result": 19, "id": 4},
    ),
    ("a notification", '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ("a notification of an unknown method", '{"jsonrpc": "2.0", "method": "foobar"}', None),
    (
        "a non-existent method",
        '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"},
    ),
    (
        "invalid JSON",
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    ),
    (
        "an invalid request object",
        '{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    ),
    (
        "a batch with invalid JSON",
        '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]',
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    ),
    (
        "an empty array",
        "[]",
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    ),
    (
        "an invalid batch of one",
        "[1]",
        [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}],
    ),
    (
        "an invalid batch of three",
        "[1,2,3]",
        [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3,
    ),
    (
        "a mixed batch",
        """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
        ]""",
        [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ],
    ),
    (
        "a batch of notifications",
        """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
        ]""",
        None,
    ),
]


def _strip_data(reply: Any) -> Any:
    """The spec's examples show no ``data``; ours adds it, so compare without it."""
    if isinstance(reply, list):
        return [_strip_data(r) for r in reply]
    if isinstance(reply, dict) and "error" in reply:
        error = {k: v for k, v in reply["error"].items() if k != "data"}
        return {**reply, "error": error}
    return reply


@pytest.mark.parametrize(("name", "request_text", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
async def test_specification_example_is_answered_as_specified(name: str, request_text: str, expected: Any) -> None:
    async with harness() as h:
        h.feed(request_text.replace("\n", " "))
        replies = await h.settle()
    if expected is None:
        assert replies == []
    else:
        assert len(replies) == 1
        assert _strip_data(replies[0]) == expected


async def test_every_error_reply_carries_a_data_type() -> None:
    async with harness() as h:
        h.feed('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
        h.feed("{bad")
        h.feed("[]")
        replies = await h.settle()
    assert [r["error"]["data"]["type"] for r in replies] == [
        "method_not_found",
        "parse_error",
        "invalid_request",
    ]
