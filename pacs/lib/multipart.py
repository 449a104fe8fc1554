"""Reading a multipart/related body (RFC 2387, the multipart syntax of RFC 2046 5.1.1) part by
part as it arrives, without holding a part in memory: the form in which WADO-RS answers a
retrieval (PS3.18 8.6.1.2 and 10.4: one part per instance, ``application/dicom``).

``read_parts(chunks, boundary)`` takes the body as an iterable of byte chunks of any size (the
boundary may fall anywhere in them) and yields a ``Part`` per body part: its header fields
(names in lower case) and ``Part.chunks()``, its content in pieces as they come.  A part's content
must be read (or is skipped) before the next part is yielded.  Memory: one chunk, the header
block (at most ``MAX_HEADER_BYTES``) and the length of a delimiter.

What is wrong raises ``MultipartError`` at the point it is found; a body that ends before the
close delimiter (``--boundary--``) raises ``Truncated``, also after a part that looked whole: an
answer cut short must not pass for a complete one.  A part whose ``Content-Length`` header
disagrees with the content found is an error too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from email.message import Message

MAX_HEADER_BYTES = 16 * 1024
_CRLF = b"\r\n"
_PADDING = b" \t"  # transport padding after a boundary (RFC 2046 5.1.1: LWSP)


class MultipartError(ValueError):
    """The body does not follow multipart syntax, or a part is not what it says."""


class Truncated(MultipartError):
    """The body ended before its close delimiter."""


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header field as (type/subtype in lower case, parameters: names in lower
    case, values unquoted)."""
    message = Message()
    message["Content-Type"] = content_type
    params = message.get_params(header="Content-Type") or [("", "")]
    return params[0][0].strip().lower(), {name.lower(): str(value) for name, value in params[1:]}


class Part:
    """One body part: ``headers`` and its content, read once through ``chunks()``."""

    def __init__(self, headers: dict[str, str], reader: _Reader):
        self.headers = headers
        self._reader = reader
        self._content: Iterator[bytes] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def chunks(self) -> Iterator[bytes]:
        if self._content is not None:
            raise MultipartError("a part's content can be read once")
        self._content = self._reader.content(self.headers.get("content-length"))
        return self._content

    def skip(self) -> None:
        """Read what is left of the content (the reader then stands at the next delimiter)."""
        for _ in self._content if self._content is not None else self.chunks():
            pass


class _Reader:
    def __init__(self, chunks: Iterable[bytes], boundary: str):
        if not boundary or len(boundary) > 70:  # RFC 2046 5.1.1: 1 to 70 characters
            raise MultipartError("no valid boundary")
        self._chunks = iter(chunks)
        self.delimiter = _CRLF + b"--" + boundary.encode("ascii")
        # The first boundary may open the body: with a CRLF in front it is found as any other.
        self.buffer = bytearray(_CRLF)
        self.ended = False
        self.in_content = False

    def _fill(self) -> bool:
        """One more chunk into the buffer; False at the end of the body."""
        for chunk in self._chunks:
            if chunk:
                self.buffer += chunk
                return True
        self.ended = True
        return False

    def _need(self, n: int) -> bool:
        while len(self.buffer) < n:
            if not self._fill():
                return False
        return True

    def skip_preamble(self) -> None:
        """Up to and including the first delimiter (RFC 2046: the preamble is ignored)."""
        keep = len(self.delimiter) - 1
        while True:
            at = self.buffer.find(self.delimiter)
            if at >= 0:
                del self.buffer[:at + len(self.delimiter)]
                return
            if len(self.buffer) > keep:
                del self.buffer[:len(self.buffer) - keep]
            if not self._fill():
                raise Truncated("the body ended before its first boundary")

    def after_delimiter(self) -> bool:
        """After a delimiter: True when a body part follows (its line ended), False at the close
        delimiter."""
        if not self._need(2):
            raise Truncated("the body ended after a boundary")
        if self.buffer[:2] == b"--":
            return False
        while True:
            at = self.buffer.find(_CRLF)
            if at >= 0:
                if self.buffer[:at].strip(_PADDING):
                    raise MultipartError("a boundary line carries more than the boundary")
                del self.buffer[:at + 2]
                return True
            if len(self.buffer) > 1024 or self.buffer.rstrip(b"\r").strip(_PADDING):
                raise MultipartError("a boundary line carries more than the boundary")
            if not self._fill():
                raise Truncated("the body ended in a boundary line")

    def headers(self) -> dict[str, str]:
        """The part's header block (RFC 2046 5.1.1: it may be empty), fields by lower-case name."""
        if not self._need(2):
            raise Truncated("the body ended in a part's header")
        if self.buffer[:2] == _CRLF:  # no header fields
            del self.buffer[:2]
            return {}
        while True:
            at = self.buffer.find(_CRLF + _CRLF)
            if at >= 0:
                block = bytes(self.buffer[:at])
                del self.buffer[:at + 4]
                break
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise MultipartError(f"a part's header is longer than {MAX_HEADER_BYTES} bytes")
            if not self._fill():
                raise Truncated("the body ended in a part's header")
        if len(block) > MAX_HEADER_BYTES:
            raise MultipartError(f"a part's header is longer than {MAX_HEADER_BYTES} bytes")
        fields: dict[str, str] = {}
        name = ""
        for line in block.decode("latin-1").split("\r\n"):
            if line[:1] in (" ", "\t") and name:  # folded (obsolete line folding, RFC 5322 2.2.3)
                fields[name] += " " + line.strip()
                continue
            key, colon, value = line.partition(":")
            if not colon or not key.strip() or key != key.strip():
                raise MultipartError("a part's header has a line that is not a header field")
            name = key.lower()
            fields[name] = value.strip()
        return fields

    def content(self, declared_length: str | None) -> Iterator[bytes]:
        """The part's content up to the next delimiter, in pieces: all but the bytes that could
        be the start of a delimiter split between two chunks are handed on at once."""
        keep = len(self.delimiter) - 1
        length = 0
        while True:
            at = self.buffer.find(self.delimiter)
            if at >= 0:
                piece = bytes(self.buffer[:at])
                del self.buffer[:at + len(self.delimiter)]
                length += len(piece)
                if piece:
                    yield piece
                break
            if len(self.buffer) > keep:
                piece = bytes(self.buffer[:len(self.buffer) - keep])
                del self.buffer[:len(piece)]
                length += len(piece)
                yield piece
            if not self._fill():
                raise Truncated("the body ended inside a part")
        if declared_length is not None:
            try:
                expected = int(declared_length)
            except ValueError:
                raise MultipartError("a part's Content-Length is not a number") from None
            if expected != length:
                raise MultipartError(f"a part of {length} bytes declared Content-Length {expected}")


def read_parts(chunks: Iterable[bytes], boundary: str) -> Iterator[Part]:
    """The body parts of a multipart body, one at a time (module docstring)."""
    reader = _Reader(chunks, boundary)
    reader.skip_preamble()
    while reader.after_delimiter():
        part = Part(reader.headers(), reader)
        yield part
        part.skip()
    # The close delimiter: what follows it is the epilogue, ignored (RFC 2046 5.1.1).
