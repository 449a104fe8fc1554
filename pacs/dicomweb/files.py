"""Reading stored instances for DICOMweb: the file in chunks, its header as DICOM JSON
(PS3.18 F.2), its frames (PS3.18 8.7.4: native pixel data as it lies in the file, or the
fragments of an encapsulated frame), and a rendered frame (PS3.18 8.7.5, JPEG or PNG).

Memory stays bounded by one instance: files are read in ``CHUNK`` pieces, headers without
the pixel data, a native frame by seeking to it; only rendering and encapsulated frames hold
one instance's pixel data.

A file is sent with the size it had when the answer's Content-Length was reckoned
(``sized_chunks``): a file replaced meanwhile by another of a different size (a resend under
the ``replace`` policy) ends the answer short, never as a part of the wrong length.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.uid import UID

CHUNK = 1024 * 1024
PIXEL_DATA_TAG = "7FE00010"

#: Transfer syntaxes whose pixel data is native (not encapsulated) and little endian: a frame
#: is a byte range of the file.
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}

#: Media types of encapsulated frames (PS3.18 Table 8.7.3-2): transfer syntax -> type.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


class NotRenderable(ValueError):
    """The instance has no frame this server can hand out or render (no pixel data, a frame
    number beyond its frames, a transfer syntax it cannot decode)."""


class ChangedWhileSent(RuntimeError):
    """A file's size is no longer the one announced in the answer's Content-Length."""


def chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            yield block


def sized_chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file in ``CHUNK`` pieces, exactly ``size`` bytes of it: ``ChangedWhileSent`` (the
    answer is cut short) when the file opened is not ``size`` bytes long."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size != size:
            raise ChangedWhileSent(f"{path.name} changed size while its study was being sent")
        left = size
        while left and (block := fh.read(min(CHUNK, left))):
            left -= len(block)
            yield block
    if left:
        raise ChangedWhileSent(f"{path.name} was cut short while its study was being sent")


def header(path: Path) -> Dataset:
    """The data set without its pixel data (and what follows it)."""
    return dcmread(path, stop_before_pixels=True)


def metadata_json(path: Path, bulk_data_uri: str) -> dict:
    """The instance as DICOM JSON (PS3.18 F.2); Pixel Data as a BulkDataURI (F.2.6)."""
    ds = header(path)
    ds.file_meta = None  # group 0002 is the file's, not the data set's (PS3.18 F.2)
    doc = ds.to_json_dict(bulk_data_threshold=1 << 30)
    if "PixelData" not in ds and "Rows" in ds:
        vr = "OB" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
        doc[PIXEL_DATA_TAG] = {"vr": vr, "BulkDataURI": bulk_data_uri}
    return doc


@dataclass(frozen=True)
class PixelLayout:
    transfer_syntax_uid: str
    number_of_frames: int
    frame_bytes: int  # native only: bytes of one frame
    offset: int  # native only: where the pixel data value starts in the file
    length: int  # native only: bytes of the pixel data value


def pixel_layout(path: Path) -> PixelLayout:
    """Where the pixel data is and how it is cut into frames (PS3.5 8.2): the header read up to
    the Pixel Data element, whose own header (PS3.5 7.1.2) gives the value's place and length."""
    with open(path, "rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True)
        position = fh.tell()
        element_header = fh.read(12)
    ts = str(ds.file_meta.TransferSyntaxUID)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if element_header[:4] != b"\xe0\x7f\x10\x00" or "Rows" not in ds:
        raise NotRenderable("the instance has no pixel data")
    if ts not in NATIVE_LITTLE_ENDIAN:
        return PixelLayout(ts, frames, 0, 0, 0)
    if ts == "1.2.840.10008.1.2":  # implicit VR: tag, 4-byte length
        offset, length = position + 8, int.from_bytes(element_header[4:8], "little")
    else:  # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
        offset, length = position + 12, int.from_bytes(element_header[8:12], "little")
    bits = int(ds.BitsAllocated)
    if bits % 8:
        raise NotRenderable("frames of BitsAllocated 1 are not cut out of the pixel data")
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    return PixelLayout(ts, frames, size, offset, length)


def native_frame(path: Path, layout: PixelLayout, number: int) -> bytes:
    """Frame ``number`` (1-based) of native pixel data, read from its place in the file."""
    if not 1 <= number <= layout.number_of_frames or number * layout.frame_bytes > layout.length:
        raise NotRenderable(f"frame {number} does not exist")
    with open(path, "rb") as fh:
        fh.seek(layout.offset + (number - 1) * layout.frame_bytes)
        return fh.read(layout.frame_bytes)


def encapsulated_frames(path: Path, numbers: list[int]) -> Iterator[bytes]:
    """The encapsulated frames ``numbers`` (1-based, PS3.5 A.4), in the order asked."""
    ds = dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if any(not 1 <= n <= count for n in numbers):
        raise NotRenderable("a frame asked for does not exist")
    frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    for n in numbers:
        yield frames[n - 1]


def render(path: Path, *, frame: int, media_type: str, viewport: tuple[int, int] | None = None,
           quality: int = 90) -> bytes:
    """Frame ``frame`` as an 8-bit image (PS3.18 8.7.5 rendered): modality LUT, then the
    first VOI window of the instance (else the frame's full range), MONOCHROME1 inverted,
    colour images as RGB; scaled down to fit ``viewport`` (width, height)."""
    import numpy as np
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, convert_color_space

    ds = dcmread(path)
    if "PixelData" not in ds:
        raise NotRenderable("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise NotRenderable(f"frame {frame} does not exist")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise NotRenderable(f"the pixel data cannot be decoded here ({UID(ds.file_meta.TransferSyntaxUID).name})") \
            from exc
    if count > 1:
        pixels = pixels[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    else:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        window = _window(ds)
        if window is not None:
            center, width = window  # PS3.3 C.11.2.1.2.1, linear
            scaled = np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5, 0.0, 1.0) * 255.0
        else:
            low, high = float(np.min(values)), float(np.max(values))
            scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0) * 255.0
        if photometric == "MONOCHROME1":
            scaled = 255.0 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if viewport is not None:
        image.thumbnail(viewport)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first VOI window (WindowCenter, WindowWidth), None without a usable one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, (list, tuple, MultiValue)) else center
    width = width[0] if isinstance(width, (list, tuple, MultiValue)) else width
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        return None
    return (c, w) if w >= 1 else None
