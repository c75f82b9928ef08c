"""gateway/upstream/sse_blocks.py: an upstream's SSE bytes cut into blocks of whole events, whatever
the reads; checked by first and last bytes; one event's size capped."""

from __future__ import annotations

import random

import pytest

from gateway.upstream.sse_blocks import EventBlocks, done_at, first_malformed, well_formed

EVENTS = [b'data: {"n":%d,"text":"a\\n\\nb data: [DONE]"}\n\n' % i for i in range(30)]
STREAM = b"".join(EVENTS) + b": keep-alive\n\n" + b'data: {"last":true}\n\n' + b"data: [DONE]\n\n"


def reads(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_any_cut_of_the_reads_gives_the_same_events_each_whole(seed: int, crlf: bool) -> None:
    data = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    blocks = EventBlocks()
    out = []
    for piece in reads(data, random.Random(seed)):
        block = blocks.feed(piece)
        assert block == b"" or block.endswith(b"\n\n")  # whole events only
        out.append(block)
        if blocks.done:
            break
    assert blocks.done and blocks.problem is None
    assert b"".join(out) == STREAM[: STREAM.index(b"data: [DONE]\n\n")]


def test_a_block_that_needs_nothing_goes_out_as_the_bytes_that_came_in() -> None:
    data = b"".join(EVENTS)
    assert EventBlocks().feed(data) is data


def test_an_unfinished_event_waits_in_pieces_joined_once() -> None:
    """The work done on a big event: each read is kept as it came (never joined with what came
    before, so nothing is rescanned); the event is joined once, when its end arrives."""
    blocks = EventBlocks(limit=64 << 20)
    piece = b"x" * 65536
    assert blocks.feed(b'data: {"content":"') == b""
    for i in range(320):  # 20 MB
        assert blocks.feed(piece) == b""
        assert len(blocks.parts) == i + 2 and blocks.size == 18 + (i + 1) * 65536
    block = blocks.feed(b'"}\n\ndata: {"next":1')
    assert len(block) == 18 + 320 * 65536 + 4 and blocks.parts == [b'data: {"next":1']


@pytest.mark.parametrize("whole", [False, True])
def test_an_event_over_the_limit_is_a_problem(whole: bool) -> None:
    blocks = EventBlocks(limit=1000)
    event = b'data: {"content":"' + b"x" * 1500 + b'"}\n\n'
    if whole:
        assert blocks.feed(b'data: {"a":1}\n\n' + event) == b""
    else:
        assert blocks.feed(event[:600]) == b"" and blocks.problem is None
        blocks.feed(event[600:1200])
    assert blocks.problem == "sent a stream event over 1000 bytes"


@pytest.mark.parametrize(
    ("event", "ok"),
    [
        (b"data: {}", True),
        (b"data:{}", True),
        (b'data: {"a":\ndata: 1}', True),
        (b": ping", True),
        (b":::", True),
        (b"event: delta\nid: 3\ndata: {}", True),
        (b"data: [DONE]", True),
        (b"hello world", False),
        (b"data: {not json", False),
        (b"data: hello", False),
        (b"data: [1]", False),
        (b"event: message", False),
        (b"data: {}\nbogus", False),
    ],
)
def test_an_event_is_checked_by_its_first_and_last_bytes(event: bytes, ok: bool) -> None:
    block = b'data: {"before":1}\n\n' + event + b"\n\ndata: {}\n\n"
    assert first_malformed(block) == (None if ok else 20)
    if not ok:
        assert not well_formed(block)
        blocks = EventBlocks()
        assert blocks.feed(block) == b'data: {"before":1}\n\n' and blocks.problem is not None


def test_done_is_found_only_as_an_event_of_its_own() -> None:
    talk = b'data: {"text":"ends with data: [DONE] then"}\n\n'
    assert done_at(talk) == -1
    assert done_at(talk + b"data:[DONE]  \n\n") == len(talk)
    assert done_at(talk + b"data: [DONE]") == len(talk)
