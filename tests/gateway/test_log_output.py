"""gateway.log_output: log lines written at once, or once per turn of the event loop while batched."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator

import pytest

from gateway.log import CurrentLogger, setup_logging, write_event
from gateway.log_output import LineBuffer, batch_lines

log = CurrentLogger("gateway")


class Output(io.BytesIO):
    """A binary output that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


@pytest.fixture(autouse=True)
def unbatched() -> Iterator[None]:
    yield
    batch_lines(None)


def test_unbatched_lines_are_written_at_once() -> None:
    output = Output()
    buffer = LineBuffer(output)
    buffer.write(b"a\n")
    buffer.flush()
    buffer.write(b"b\n")
    assert output.getvalue() == b"a\nb\n" and output.writes == 2


async def test_the_lines_of_one_loop_turn_go_out_in_one_write_when_the_turn_ends() -> None:
    output = Output()
    buffer = LineBuffer(output)
    batch_lines(asyncio.get_running_loop())
    for line in (b"a\n", b"b\n", b"c\n"):
        buffer.write(line)
        buffer.flush()
    assert output.getvalue() == b""  # still this turn
    await asyncio.sleep(0)
    assert output.getvalue() == b"a\nb\nc\n" and output.writes == 1
    buffer.write(b"d\n")
    await asyncio.sleep(0)
    assert output.getvalue() == b"a\nb\nc\nd\n" and output.writes == 2


async def test_stopping_writes_what_was_kept_and_later_lines_go_out_at_once() -> None:
    output = Output()
    buffer = LineBuffer(output)
    batch_lines(asyncio.get_running_loop())
    buffer.write(b"a\n")
    batch_lines(None)
    assert output.getvalue() == b"a\n"
    buffer.write(b"b\n")
    assert output.getvalue() == b"a\nb\n"
    await asyncio.sleep(0)  # the turn's drain finds nothing left
    assert output.getvalue() == b"a\nb\n"


async def test_a_line_from_another_thread_is_written_at_once() -> None:
    output = Output()
    buffer = LineBuffer(output)
    batch_lines(asyncio.get_running_loop())
    thread = threading.Thread(target=buffer.write, args=(b"from a thread\n",))
    thread.start()
    thread.join()
    assert output.getvalue() == b"from a thread\n"


async def test_setup_loggings_json_lines_are_batched_in_order() -> None:
    output = Output()
    setup_logging("json", "info", stream=output)
    batch_lines(asyncio.get_running_loop())
    log.info("first", n=1)
    write_event(log, "info", "request", {"status": 200})
    log.warning("third", n=3)
    assert output.writes == 0
    await asyncio.sleep(0)
    events = [json.loads(line)["event"] for line in output.getvalue().splitlines()]
    assert events == ["first", "request", "third"] and output.writes == 1
