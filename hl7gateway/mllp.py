"""MLLP framing (HL7 v2.x Implementation Guide, Appendix C "Lower Layer Protocols", MLLP
release 1): a message travels as ``<VT> payload <FS><CR>``.

This module only deals with bytes -- no sockets, no parsing -- so that the inbound listener
(``hl7gateway.server``), the outbound client and test sinks share one implementation.

Stable API (other modules build on it):

* ``START_BLOCK``, ``END_BLOCK``, ``frame(payload) -> bytes``
* ``MLLPDecoder(max_frame_bytes=None)`` with ``feed(data) -> list[bytes]``; ``take_junk()``;
  ``in_frame`` / ``partial``; counters ``junk_bytes``, ``fs_without_cr``.
* ``FrameTooLarge`` raised by ``feed`` when a frame exceeds ``max_frame_bytes``.

Leniency (what real senders do):

* bytes before a start block (noise, keep-alives, a half frame after a reconnect) are
  skipped and reported through ``take_junk()``;
* a frame ended by ``<FS>`` without the ``<CR>`` is accepted: the frame completes at the FS
  (so a sender that waits for the ACK is not left hanging) and a CR arriving next is
  swallowed; the case is counted in ``fs_without_cr``;
* a ``<VT>`` inside an unfinished frame is kept as data (it cannot occur in valid HL7, and
  the parser will reject the message; we do not guess where frames begin).
"""

from __future__ import annotations

START_BLOCK = b"\x0b"  # <VT>
END_BLOCK = b"\x1c\x0d"  # <FS><CR>
FS = b"\x1c"
CR = b"\x0d"

#: How much of an oversize frame is kept (for reading its MSH and building an AR).
HEAD_BYTES = 4096
#: How much of each skipped junk run is kept for logging (the count is always exact).
JUNK_SAMPLE_BYTES = 256


def frame(payload: bytes) -> bytes:
    """Wrap one HL7 message in an MLLP block: ``<VT> payload <FS><CR>``."""
    if isinstance(payload, str):  # defensive: callers must encode with the MSH-18 charset
        raise TypeError("frame() takes bytes; encode the message with its MSH-18 character set first")
    return START_BLOCK + bytes(payload) + END_BLOCK


class FrameTooLarge(Exception):
    """A frame grew beyond ``max_frame_bytes``.

    ``head`` holds the first ``HEAD_BYTES`` of the frame (enough to read MSH and answer AR),
    ``size`` the number of bytes seen when the cap was passed, ``payloads_before`` the complete
    payloads that preceded the oversize frame in the same ``feed`` call (answer them first).
    The decoder discards the rest of the oversize frame up to its end block; input after the
    point of detection is kept and processed by the next ``feed()`` call (``feed(b"")`` works).
    """

    def __init__(self, head: bytes, size: int, limit: int, payloads_before: list[bytes]):
        super().__init__(f"MLLP frame larger than {limit} bytes")
        self.head = head
        self.size = size
        self.limit = limit
        self.payloads_before = payloads_before


class MLLPDecoder:
    """Incremental MLLP decoder: feed it whatever ``recv`` returned, get complete payloads.

    Works for any split of the byte stream: one byte per write, two frames in one write,
    a frame across many reads.
    """

    def __init__(self, max_frame_bytes: int | None = None):
        self.max_frame_bytes = max_frame_bytes
        self._pending = bytearray()  # input not yet examined
        self._frame = bytearray()  # content of the frame being assembled (after <VT>)
        self._in_frame = False
        self._discarding = False  # inside an oversize frame: drop bytes up to its FS
        self._after_fs = False  # last byte consumed was FS: a following CR belongs to it
        self._junk: list[bytes] = []
        self.junk_bytes = 0
        self.fs_without_cr = 0
        self.frames = 0
        self.oversize_frames = 0

    # -- state --------------------------------------------------------------------------
    @property
    def in_frame(self) -> bool:
        """True when a start block was read and its end block has not arrived yet."""
        return self._in_frame

    @property
    def partial(self) -> bytes | None:
        """The content of an unfinished frame (a truncated frame when the peer closes now)."""
        return bytes(self._frame) if self._in_frame and not self._discarding else None

    def take_junk(self) -> list[bytes]:
        """Samples of the byte runs skipped outside frames since the last call (for the log)."""
        junk, self._junk = self._junk, []
        return junk

    def _skip(self, data: bytes | bytearray) -> None:
        if data:
            self.junk_bytes += len(data)
            self._junk.append(bytes(data[:JUNK_SAMPLE_BYTES]))

    # -- decoding -----------------------------------------------------------------------
    def feed(self, data: bytes = b"") -> list[bytes]:
        """Add received bytes; return the payloads of the frames completed, in order.

        Raises ``FrameTooLarge`` (see there) when the frame being assembled passes the cap.
        """
        if data:
            self._pending += data
        buf = self._pending
        out: list[bytes] = []
        limit = self.max_frame_bytes
        while buf:
            if self._after_fs:
                self._after_fs = False
                if buf[0] == 0x0D:
                    del buf[:1]
                    continue
                self.fs_without_cr += 1
            if not self._in_frame:
                start = buf.find(START_BLOCK)
                if start < 0:
                    self._skip(buf)
                    buf.clear()
                    break
                if start:
                    self._skip(buf[:start])
                del buf[: start + 1]
                self._in_frame = True
                self._frame = bytearray()
                continue
            end = buf.find(FS)
            chunk_end = len(buf) if end < 0 else end
            if self._discarding:
                del buf[:chunk_end]
            else:
                room = None if limit is None else limit - len(self._frame)
                if room is not None and chunk_end > room:
                    # Keep only the head for the AR; drop the rest of this frame.
                    self._frame += buf[: max(room, 0)]
                    seen = len(self._frame) + (chunk_end - max(room, 0))
                    head = bytes(self._frame[:HEAD_BYTES])
                    del buf[:chunk_end]
                    self._frame = bytearray()
                    self._discarding = True
                    self.oversize_frames += 1
                    if end >= 0:
                        self._finish_discard(buf)
                    raise FrameTooLarge(head, seen, limit, out)
                self._frame += buf[:chunk_end]
                del buf[:chunk_end]
            if end < 0:
                break
            # buf[0] is FS now
            del buf[:1]
            self._after_fs = True
            self._in_frame = False
            if self._discarding:
                self._discarding = False
            else:
                out.append(bytes(self._frame))
                self.frames += 1
            self._frame = bytearray()
        return out

    def _finish_discard(self, buf: bytearray) -> None:
        # The FS of the oversize frame is at buf[0]: close the frame.
        del buf[:1]
        self._after_fs = True
        self._in_frame = False
        self._discarding = False
