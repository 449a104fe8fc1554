"""MLLP framing (HL7 v2 Implementation Guide, Appendix C): pure byte-level tests."""

import pytest

from hl7gateway.mllp import END_BLOCK, START_BLOCK, FrameTooLarge, MLLPDecoder, frame

MSG1 = b"MSH|^~\\&|EPIC|HOSP|PACS|RAD|20250101||ORM^O01|1|P|2.3.1\rPID|1||123^^^HOSP^MR\r"
MSG2 = b"MSH|^~\\&|EPIC|HOSP|PACS|RAD|20250101||ORM^O01|2|P|2.3.1\rPID|1||456^^^HOSP^MR\r"


def test_frame_wraps_payload():
    assert frame(b"abc") == b"\x0babc\x1c\r"
    assert START_BLOCK == b"\x0b" and END_BLOCK == b"\x1c\r"
    with pytest.raises(TypeError):
        frame("text")


def test_two_frames_in_one_write():
    d = MLLPDecoder()
    assert d.feed(frame(MSG1) + frame(MSG2)) == [MSG1, MSG2]
    assert not d.in_frame and d.junk_bytes == 0 and d.frames == 2


def test_one_byte_per_write():
    d = MLLPDecoder()
    data = frame(MSG1) + frame(MSG2)
    got = []
    for i in range(len(data)):
        got += d.feed(data[i : i + 1])
    assert got == [MSG1, MSG2]
    assert d.fs_without_cr == 0 and d.junk_bytes == 0


def test_junk_before_start_block_is_skipped_and_reported():
    d = MLLPDecoder()
    assert d.feed(b"GET / HTTP/1.0\r\n" + frame(MSG1) + b"\x00\x00" + frame(MSG2)) == [MSG1, MSG2]
    junk = d.take_junk()
    assert junk == [b"GET / HTTP/1.0\r\n", b"\x00\x00"]
    assert d.junk_bytes == 18
    assert d.take_junk() == []


def test_fs_without_cr_completes_frame_immediately():
    d = MLLPDecoder()
    assert d.feed(START_BLOCK + MSG1 + b"\x1c") == [MSG1]
    # the next frame follows directly, no CR
    assert d.feed(START_BLOCK + MSG2 + b"\x1c") == [MSG2]
    assert d.fs_without_cr == 1
    # a late CR belonging to the previous FS is not junk
    assert d.feed(b"\r") == []
    assert d.junk_bytes == 0


def test_truncated_frame_is_visible_as_partial():
    d = MLLPDecoder()
    assert d.feed(START_BLOCK + MSG1[:20]) == []
    assert d.in_frame and d.partial == MSG1[:20]


def test_oversize_frame_raises_and_decoder_recovers():
    d = MLLPDecoder(max_frame_bytes=100)
    big = b"MSH|^~\\&|X|Y|||||ORM^O01|BIG|P|2.3.1\r" + b"Z" * 500
    with pytest.raises(FrameTooLarge) as ei:
        d.feed(frame(MSG1[:50]) + frame(big) + frame(MSG2[:60]))
    exc = ei.value
    assert exc.payloads_before == [MSG1[:50]]
    assert exc.head.startswith(b"MSH|^~\\&|X|Y") and len(exc.head) == 100
    assert exc.size == len(big)
    # the rest of the input was kept: the next call returns the frame after the big one
    assert d.feed(b"") == [MSG2[:60]]
    assert d.oversize_frames == 1 and d.junk_bytes == 0


def test_oversize_frame_across_reads_is_discarded_up_to_its_end():
    d = MLLPDecoder(max_frame_bytes=10)
    with pytest.raises(FrameTooLarge):
        d.feed(START_BLOCK + b"A" * 30)
    assert d.feed(b"B" * 1000) == []
    assert d.partial is None and d.in_frame
    assert d.feed(b"C\x1c\r" + frame(b"ok")) == [b"ok"]
