"""Dispatch: ids, validation errors with paths, concurrency, limits, cancellation, the error boundary."""

from __future__ import annotations

import json
import logging

import anyio
import msgspec
import pytest

from llm_rpc._log import _JsonFormatter
from llm_rpc._secret import Secret
from tests.protocol._harness import Gate, harness, spec_table

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "raw_id",
    ['"abc"', "123456789012345678901234567890", "-7", "1.5", "0", '"\\u00e9t\\u00e9"', '""', "null"],
)
async def test_request_ids_are_echoed_byte_for_byte(raw_id: str) -> None:
    async with harness() as h:
        h.feed('{"jsonrpc":"2.0","id":' + raw_id + ',"method":"subtract","params":[3,1]}')
        h.feed('{"jsonrpc":"2.0","id":' + raw_id + ',"method":"echo","params":{"value":1}}')
        with anyio.fail_after(5):
            await h.session.wait_idle()
        raw = list(h.raw)
    assert len(raw) == 2
    for reply in raw:
        assert reply.startswith(b'{"jsonrpc":"2.0","id":' + raw_id.encode() + b",")


@pytest.mark.parametrize("raw_id", ["{}", "[1]", "true", "false"])
async def test_an_id_that_is_not_a_string_number_or_null_is_an_invalid_request(raw_id: str) -> None:
    async with harness() as h:
        h.feed('{"jsonrpc":"2.0","id":' + raw_id + ',"method":"subtract","params":[3,1]}')
        (reply,) = await h.settle()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600


@pytest.mark.parametrize(
    ("frame", "reason_part"),
    [
        ('{"jsonrpc":"1.0","id":1,"method":"echo"}', "jsonrpc"),
        ('{"id":1,"method":"echo"}', "jsonrpc"),
        ('{"jsonrpc":"2.0","id":1,"method":"echo","params":"x"}', "params"),
        ('{"jsonrpc":"2.0","id":1,"method":"echo","params":null}', "params"),
        ('{"jsonrpc":"2.0","id":1}', "method"),
    ],
)
async def test_malformed_request_objects_get_invalid_request_with_their_id(frame: str, reason_part: str) -> None:
    async with harness() as h:
        h.feed(frame)
        (reply,) = await h.settle()
    assert reply["id"] == 1
    assert reply["error"]["code"] == -32600
    assert reason_part in reply["error"]["data"]["reason"]


async def test_a_scalar_frame_is_an_invalid_request_not_a_parse_error() -> None:
    async with harness() as h:
        h.feed("42")
        h.feed('"text"')
        replies = await h.settle()
    assert [r["error"]["code"] for r in replies] == [-32600, -32600]


async def test_invalid_utf8_is_a_parse_error() -> None:
    async with harness() as h:
        h.feed(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":"\xff\xfe"}}')
        (reply,) = await h.settle()
    assert reply["error"]["code"] == -32700
    assert reply["id"] is None


async def test_wrong_param_type_names_the_field_path_and_expected_type() -> None:
    async with harness() as h:
        h.feed('{"jsonrpc":"2.0","id":1,"method":"echo","params":{"count":"three"}}')
        (reply,) = await h.settle()
    error = reply["error"]
    assert error["code"] == -32602
    assert error["data"]["path"] == "params.count"
    assert error["data"]["expected"] == "int"
    assert error["data"]["got"] == "str"


async def test_unknown_and_missing_params_are_named() -> None:
    async with harness() as h:
        h.feed('{"jsonrpc":"2.0","id":1,"method":"echo","params":{"cuont":3}}')
        h.feed('{"jsonrpc":"2.0","id":2,"method":"subtract","params":{"minuend":3}}')
        h.feed('{"jsonrpc":"2.0","id":3,"method":"subtract","params":[1,2,3]}')
        unknown, missing, too_many = await h.settle()
    assert unknown["error"]["data"]["unknown_field"] == "cuont"
    assert unknown["error"]["data"]["path"] == "params"
    assert missing["error"]["data"]["missing_field"] == "subtrahend"
    assert missing["error"]["data"]["path"] == "params.subtrahend"
    assert too_many["error"]["code"] == -32602


async def test_a_slow_request_does_not_delay_a_fast_one() -> None:
    gate = Gate()
    async with harness(spec_table(gate)) as h:
        h.feed('{"jsonrpc":"2.0","id":"slow","method":"slow","params":{"value":1}}')
        h.feed('{"jsonrpc":"2.0","id":"fast","method":"echo","params":{"value":2}}')
        with anyio.fail_after(5):
            await gate.started.wait()
            while not h.raw:
                await anyio.sleep(0.001)
        first = msgspec.json.decode(h.raw[0])
        assert first == {"jsonrpc": "2.0", "id": "fast", "result": 2}
        gate.release.set()
        replies = await h.settle()
    assert replies[-1] == {"jsonrpc": "2.0", "id": "slow", "result": 1}


async def test_batch_elements_run_concurrently_and_reply_in_input_order() -> None:
    gate = Gate()
    async with harness(spec_table(gate)) as h:
        h.feed(
            "["
            '{"jsonrpc":"2.0","id":1,"method":"slow","params":{"value":"a"}},'
            '{"jsonrpc":"2.0","id":2,"method":"slow","params":{"value":"b"}},'
            '{"jsonrpc":"2.0","id":3,"method":"echo","params":{"value":"c"}},'
            '{"jsonrpc":"2.0","method":"echo","params":{"value":"n"}}'
            "]"
        )
        with anyio.fail_after(5):
            while gate.entered < 2:
                await anyio.sleep(0.001)
        assert gate.entered == 2  # both slow elements are running at once
        assert h.raw == []  # the batch reply waits for every element
        gate.release.set()
        (reply,) = await h.settle()
    assert [r["id"] for r in reply] == [1, 2, 3]
    assert [r["result"] for r in reply] == ["a", "b", "c"]


async def test_past_the_in_flight_cap_a_request_is_refused_at_once() -> None:
    gate = Gate()
    async with harness(spec_table(gate), max_in_flight=2) as h:
        for i in range(3):
            h.feed(json.dumps({"jsonrpc": "2.0", "id": i, "method": "slow", "params": {"value": i}}))
        with anyio.fail_after(5):
            while not h.raw:
                await anyio.sleep(0.001)
        busy = msgspec.json.decode(h.raw.pop())
        assert busy["id"] == 2
        assert busy["error"]["code"] == -32008
        assert busy["error"]["data"] == {"type": "server_busy", "limit": "max_in_flight", "max_in_flight": 2}
        gate.release.set()
        replies = await h.settle()
    assert sorted(r["result"] for r in replies) == [0, 1]


async def test_notifications_are_never_answered_even_when_they_fail() -> None:
    async with harness() as h:
        h.feed('{"jsonrpc":"2.0","method":"crash","params":{"value":"x"}}')
        h.feed('{"jsonrpc":"2.0","method":"echo","params":{"count":"bad"}}')
        h.feed('{"jsonrpc":"2.0","method":"nope"}')
        assert await h.settle() == []


async def test_an_unexpected_exception_becomes_internal_error_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = Secret("sk-dispatch-canary-5e6f7a8b9c0d")
    async with harness() as h:
        h.feed(f'{{"jsonrpc":"2.0","id":1,"method":"crash","params":{{"value":"{secret.reveal()}"}}}}')
        with caplog.at_level(logging.ERROR, logger="llm_rpc"):
            (reply,) = await h.settle()
    error = reply["error"]
    assert error["code"] == -32603
    assert error["message"] == "Internal error"
    assert set(error["data"]) == {"type", "correlation_id"}
    assert "boom" not in msgspec.json.encode(reply).decode()
    (record,) = [r for r in caplog.records if r.getMessage() == "internal error in method"]
    assert record.correlation_id == error["data"]["correlation_id"]  # type: ignore[attr-defined]
    formatted = _JsonFormatter().format(record)
    assert "boom" in formatted
    assert secret.reveal() not in formatted


async def test_domain_errors_get_their_code_and_typed_data() -> None:
    async with harness() as h:
        h.feed('{"jsonrpc":"2.0","id":1,"method":"limited","params":{}}')
        (reply,) = await h.settle()
    assert reply["error"]["code"] == -32005
    assert reply["error"]["data"] == {
        "type": "rate_limited",
        "backend": "b1",
        "status": 429,
        "retry_after": 2.0,
    }


async def test_cancelling_an_in_flight_request_answers_it_with_cancelled() -> None:
    gate = Gate()
    async with harness(spec_table(gate)) as h:
        h.feed('{"jsonrpc":"2.0","id":7,"method":"slow","params":{"value":1}}')
        with anyio.fail_after(5):
            await gate.started.wait()
        assert h.session.cancel(7) is True
        assert h.session.cancel(8) is False
        (reply,) = await h.settle()
    assert reply["id"] == 7
    assert reply["error"]["code"] == -32800
    assert reply["error"]["data"]["type"] == "cancelled"
