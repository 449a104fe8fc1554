"""The multipart/related reader of WADO-RS answers (``pacs.lib.multipart``, RFC 2046 5.1.1): the
body in chunks of every size, so that each boundary falls at every place in them; part headers;
preamble, padding and epilogue; what is wrong; a body cut short.  Last, the same reader on a
real HTTP answer that a listener writes in small, uneven pieces and cuts off."""

from __future__ import annotations

import random
import socket
import threading

import pytest
import requests

from pacs.lib.multipart import MAX_HEADER_BYTES, MultipartError, Truncated, media_type, read_parts

BOUNDARY = "b0undary-7f3c"


def _body(*parts: tuple[dict, bytes], preamble: bytes = b"", epilogue: bytes = b"", padding: bytes = b"") -> bytes:
    out = bytearray(preamble)
    for headers, content in parts:
        out += f"--{BOUNDARY}".encode() + padding + b"\r\n"
        out += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
        out += content + b"\r\n"
    out += f"--{BOUNDARY}--".encode() + epilogue
    return bytes(out)


def _read(chunks) -> list[tuple[dict, bytes]]:
    return [(part.headers, b"".join(part.chunks())) for part in read_parts(chunks, BOUNDARY)]


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# Content that looks like a boundary without being one, a CR LF at each end, binary bytes.
TRICKY = b"\r\n--b0undary-7f3\r\n-" + bytes(range(256)) + b"--" + BOUNDARY.encode() + b"\r\n"
PARTS = [
    ({"Content-Type": "application/dicom", "Content-Length": str(len(TRICKY))}, TRICKY),
    ({}, b""),
    ({"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}, b"x" * 300),
]
EXPECTED = [
    ({"content-type": "application/dicom", "content-length": str(len(TRICKY))}, TRICKY),
    ({}, b""),
    ({"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}, b"x" * 300),
]


def test_every_chunk_size_puts_the_boundaries_everywhere_and_reads_the_same():
    body = _body(*PARTS, preamble=b"ignored preamble\r\n", epilogue=b"\r\nignored epilogue")
    for size in range(1, len(body) + 1):
        assert _read(_split(body, size)) == EXPECTED, size


def test_random_uneven_chunks_and_empty_ones():
    body = _body(*PARTS)
    rng = random.Random(7)
    for _ in range(200):
        chunks, at = [], 0
        while at < len(body):
            n = rng.choice([0, 1, 2, 3, 17, 40, 199])
            chunks.append(body[at:at + n])
            at += n
        assert _read(chunks) == EXPECTED


def test_the_first_boundary_at_the_very_start_and_transport_padding_after_boundaries():
    body = _body(*PARTS, padding=b" \t ")
    assert body.startswith(f"--{BOUNDARY} \t \r\n".encode())
    assert _read([body]) == EXPECTED


def test_header_fields_case_folded_names_trimmed_values_and_folded_lines():
    body = (f"--{BOUNDARY}\r\nCONTENT-TYPE:   application/dicom  \r\nX-Note: one\r\n two\r\n\r\nabc\r\n"
            f"--{BOUNDARY}--").encode()
    [(headers, content)] = _read([body])
    assert headers == {"content-type": "application/dicom", "x-note": "one two"} and content == b"abc"


def test_content_is_handed_on_in_pieces_without_waiting_for_the_end_of_the_part():
    big = bytes(1000) * 50
    body = _body(({}, big))
    pieces = [len(p) for part in read_parts(_split(body, 4096), BOUNDARY) for p in part.chunks()]
    assert sum(pieces) == len(big) and len(pieces) > 10 and max(pieces) <= 4096 + len(BOUNDARY) + 4


def test_a_part_not_read_is_skipped():
    parts = list(read_parts([_body(*PARTS)], BOUNDARY))
    assert len(parts) == 3  # each skipped when the next was asked for


@pytest.mark.parametrize("cut", [5, 40, 100, 200, 350, -40, -(len(BOUNDARY) + 4), -2, -1])
def test_a_body_cut_short_anywhere_is_truncated_never_a_shorter_answer(cut):
    body = _body(*PARTS)
    with pytest.raises(Truncated):
        _read(_split(body[:cut], 7))


def test_a_body_cut_exactly_after_a_whole_part_is_truncated():
    body = _body(*PARTS)
    end_of_first = body.index(f"\r\n--{BOUNDARY}".encode(), 10)
    with pytest.raises(Truncated):
        _read([body[:end_of_first + 2 + 2 + len(BOUNDARY) + 2]])  # the next boundary line, then nothing
    with pytest.raises(Truncated):
        _read([body[:end_of_first]])


def test_the_parts_before_a_cut_are_read_then_the_cut_raises():
    body = _body(*PARTS)
    parts = read_parts([body[:-30]], BOUNDARY)
    first = next(parts)
    assert b"".join(first.chunks()) == TRICKY
    second = next(parts)
    assert b"".join(second.chunks()) == b""
    third = next(parts)
    with pytest.raises(Truncated):
        b"".join(third.chunks())


def test_no_boundary_at_all_is_truncated():
    with pytest.raises(Truncated):
        _read([b"just some text, no parts"])


@pytest.mark.parametrize(("body", "message"), [
    (f"--{BOUNDARY}junk\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), "more than the boundary"),
    (f"--{BOUNDARY}\r\nnot a header\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), "not a header field"),
    (f"--{BOUNDARY}\r\nContent-Length: 4\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), "declared Content-Length 4"),
    (f"--{BOUNDARY}\r\nContent-Length: many\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), "not a number"),
    (f"--{BOUNDARY}\r\nX: {'y' * MAX_HEADER_BYTES}\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), "header is longer"),
])
def test_what_is_not_multipart_syntax_is_an_error(body, message):
    with pytest.raises(MultipartError, match=message):
        _read(_split(body, 1000))


def test_a_part_is_read_once():
    part = next(read_parts([_body(*PARTS)], BOUNDARY))
    part.chunks()
    with pytest.raises(MultipartError):
        part.chunks()


def test_media_type_parameters():
    assert media_type(f'Multipart/Related; type="application/dicom"; Boundary={BOUNDARY}') == (
        "multipart/related", {"type": "application/dicom", "boundary": BOUNDARY})
    assert media_type('multipart/related; boundary="a b;c"') == ("multipart/related", {"boundary": "a b;c"})
    assert media_type("") == ("", {})


# ------------------------------------------------------------------------------- a real HTTP answer
class _Server:
    """A listener that answers one GET with a multipart body written in small pieces (each sent
    on its own), without Content-Length: the end of the connection ends the body."""

    def __init__(self, body: bytes):
        self.body = body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/studies/1.2.3"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: multipart/related; "
                         b'type="application/dicom"; boundary=' + BOUNDARY.encode() + b"\r\n\r\n")
            rng = random.Random(3)
            at = 0
            while at < len(self.body):
                n = rng.choice([1, 2, 5, 13, 64, 333])
                conn.sendall(self.body[at:at + n])
                at += n

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


@pytest.mark.socket
@pytest.mark.parametrize("cut", [None, -60])
def test_a_real_http_answer_in_uneven_pieces_is_read_whole_or_found_cut(cut):
    body = _body(*PARTS)
    server = _Server(body if cut is None else body[:cut])
    try:
        with requests.get(server.url, stream=True, timeout=30) as response:
            kind, params = media_type(response.headers["Content-Type"])
            assert kind == "multipart/related" and params["boundary"] == BOUNDARY
            if cut is None:
                assert _read(response.iter_content(64)) == EXPECTED
            else:
                with pytest.raises(Truncated):
                    _read(response.iter_content(64))
    finally:
        server.close()
