"""Turning whatever a design tool exported into the RGB frame a family wants."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError, features

from vidrop.config.errors import InputError

try:  # HEIC/HEIF, what iPhones and macOS write
    import pillow_heif

    pillow_heif.register_heif_opener()
    HAS_HEIF = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency; without it .heic is refused by name
    HAS_HEIF = False

# What vidrop takes as an image: formats Pillow decodes reliably, each by the names tools give it.
READABLE_SUFFIXES = frozenset(
    {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | ({".heic", ".heif", ".hif"} if HAS_HEIF else set())
    | ({".avif"} if features.check("avif") else set())
)
# Names that are images vidrop cannot (or must not) decode: each one gets an error file naming its format
# instead of being ignored (its sidecar would otherwise become a text-only job). A PSD is refused although
# Pillow opens some: its stored composite is blank unless "Maximize compatibility" was on, a silent wrong result.
UNREADABLE_FORMATS = {
    ".psd": "Photoshop (PSD)",
    ".psb": "Photoshop (PSB)",
    ".svg": "SVG (vector)",
    ".svgz": "SVG (vector)",
    ".ai": "Illustrator (AI)",
    ".eps": "EPS (vector)",
    ".xcf": "GIMP (XCF)",
    ".kra": "Krita (KRA)",
    ".tga": "Targa (TGA)",
    ".exr": "OpenEXR",
    ".hdr": "Radiance HDR",
    ".jxl": "JPEG XL",
    ".ico": "icon (ICO)",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",  # only when this installation cannot decode them
    **{
        suffix: f"camera RAW ({suffix[1:].upper()})"
        for suffix in (
            ".cr2",
            ".cr3",
            ".crw",
            ".nef",
            ".nrw",
            ".arw",
            ".srf",
            ".sr2",
            ".dng",
            ".orf",
            ".raf",
            ".rw2",
            ".pef",
            ".srw",
            ".x3f",
            ".3fr",
            ".iiq",
            ".erf",
            ".kdc",
            ".mrw",
            ".rwl",
        )
    },
}
IMAGE_SUFFIXES = READABLE_SUFFIXES | frozenset(UNREADABLE_FORMATS)
# Content refused whatever the name says (Pillow would open some of them, with a wrong picture).
REFUSED_CONTENT = frozenset(
    {
        "Photoshop (PSD)",
        "camera RAW (CR2)",
        "camera RAW (CR3)",
        "camera RAW (RAF)",
        "camera RAW (ORF)",
        "camera RAW (RW2)",
        "SVG (vector)",
        "EPS (vector)",
        "GIMP (XCF)",
        "OpenEXR",
        "JPEG XL",
        "QOI",
    }
)
EXPORT_FIX = "Export it as PNG or JPEG (File > Export) and drop that file with the same name instead."

# Leading bytes of image formats, to name what a file really is (whatever it is called).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"FUJIFILMCCD-RAW", "camera RAW (RAF)"),
    (b"IIRO", "camera RAW (ORF)"),
    (b"IIU\x00", "camera RAW (RW2)"),
    (b"gimp xcf", "GIMP (XCF)"),
    (b"%!PS-Adobe", "EPS (vector)"),
    (b"qoif", "QOI"),
)
_BMFF_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"crx ": "camera RAW (CR3)",
}
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
ZERO_RUN = bytes(4096)  # a page never written: preallocated files are filled a page or more at a time
ZERO_TAIL = bytes(256)  # the end of a file still being filled in


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes say (None: not an image format vidrop knows)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return _BMFF_BRANDS.get(head[8:12], "HEIF" if head[8:11] in (b"hei", b"hev") else None)
    if head[:2] == b"II" and head[8:10] == b"CR":
        return "camera RAW (CR2)"
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in head):
        return "SVG (vector)"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


@dataclass(frozen=True)
class Unfinished:
    """Why a file looks like it is still being written; `is_certain`: its format's end is missing."""

    reason: str
    is_certain: bool


def find_unfinished(data: bytes) -> Unfinished | None:
    """Signs that an image file is not complete yet, from its own structure.

    Copy tools and SMB clients often set the final size first and fill the file in afterwards, so a
    file of the right size can still be mostly zeros. Formats with an end marker say whether the end
    was written; compressed data never holds a whole page of zero bytes, so one is a hole still to fill.
    """
    kind = sniff_format(data[:64])
    if kind == "PNG":
        if not data.endswith(PNG_END):
            end = data.rfind(PNG_END)
            if end > 0 and not data[end + len(PNG_END) :].strip(b"\x00"):
                return Unfinished("zero bytes follow the end of the PNG", is_certain=False)
            return Unfinished("the end of the PNG (its IEND chunk) is missing", is_certain=True)
        return None  # zeros inside a PNG fail its decode (zlib, chunk names)
    if kind == "JPEG":
        end, scan_start = _jpeg_end(data)
        if end is None:
            return Unfinished("the end of the JPEG (its EOI marker) is missing", is_certain=True)
        if ZERO_RUN in data[scan_start:end]:
            return Unfinished("the JPEG has a run of zero bytes where picture data belongs", is_certain=False)
        if end < len(data) and not data[end:].strip(b"\x00"):
            return Unfinished("zero bytes follow the end of the JPEG", is_certain=False)
        return None
    if kind == "GIF":
        if not data.endswith(b";"):
            return Unfinished("the end of the GIF (its trailer byte) is missing", is_certain=True)
        return None
    if kind == "WebP":
        declared = struct.unpack_from("<I", data, 4)[0] + 8
        if declared > len(data):
            return Unfinished("the WebP is shorter than its header says", is_certain=True)
        if not _chunks_are_whole(data, 12, declared, little_endian=True):
            return Unfinished("a WebP chunk is missing or cut short", is_certain=True)
    elif kind in ("HEIC", "HEIF", "AVIF"):
        if not _chunks_are_whole(data, 0, len(data), little_endian=False):
            return Unfinished(f"a {kind} box is missing or cut short", is_certain=True)
    else:
        return None  # BMP and TIFF may hold zero pixels; their decode and the settle window judge them
    if data.endswith(ZERO_TAIL):  # compressed picture data does not end in a run of zeros
        return Unfinished(f"the {kind} ends in zero bytes where picture data belongs", is_certain=True)
    if ZERO_RUN in data:
        return Unfinished(f"the {kind} has a run of zero bytes where picture data belongs", is_certain=False)
    return None


def _jpeg_end(data: bytes) -> tuple[int | None, int]:
    """Offset just past the main image's EOI (None if absent) and where its first scan starts.

    Walks the segments (an EXIF thumbnail's own EOI sits inside its APP1 segment and is skipped
    with it), then each scan's entropy-coded data up to the next marker.
    """
    position, size, scan_start = 2, len(data), 0
    while position + 4 <= size:
        if data[position] != 0xFF:
            return None, scan_start
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return position + 2, scan_start
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        length = struct.unpack_from(">H", data, position + 2)[0]
        if length < 2:
            return None, scan_start
        position += 2 + length
        if marker == 0xDA:  # entropy-coded data: FF 00 is a stuffed byte, FF D0-D7 a restart
            scan_start = scan_start or position
            while True:
                position = data.find(b"\xff", position)
                if position < 0 or position + 1 >= size:
                    return None, scan_start
                following = data[position + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    position += 1 if following == 0xFF else 2
                    continue
                break
    if position + 2 <= size and data[position : position + 2] == b"\xff\xd9":
        return position + 2, scan_start
    return None, scan_start


def _chunks_are_whole(data: bytes, start: int, end: int, *, little_endian: bool) -> bool:
    """RIFF chunks (WebP) or ISO-BMFF boxes (HEIF, AVIF) from start tile the file up to end."""
    position = start
    while position < end:
        if position + 8 > end:
            return False
        if little_endian:
            name, length = data[position : position + 4], struct.unpack_from("<I", data, position + 4)[0]
            length = 8 + length + (length & 1)
        else:
            length, name = struct.unpack_from(">I", data, position)[0], data[position + 4 : position + 8]
            if length == 1 and position + 16 <= end:
                length = struct.unpack_from(">Q", data, position + 8)[0]
            elif length == 0:
                length = end - position
        if not all(0x20 <= byte < 0x7F for byte in name) or length < 8:
            return False
        position += length
    return position == end or (little_endian and position == end + 1)


@dataclass(frozen=True)
class ImageFacts:
    """What the file held: its format, size and number of frames (an animated file is used by its first)."""

    format: str
    width: int
    height: int
    frames: int

    @property
    def is_animated(self) -> bool:
        return self.frames > 1


def check_readable_name(path: Path) -> None:
    """Refuse files of formats vidrop does not take, by name or by content (a PSD renamed .png), naming the
    format and what to export instead."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        head = b""
    check_readable(path.name, head)


def check_readable(name: str, head: bytes) -> None:
    """`check_readable_name` for a file's name and its first bytes."""
    suffix = PurePosixPath(name).suffix.lower()
    found = sniff_format(head) if head else None
    if suffix in READABLE_SUFFIXES and found not in REFUSED_CONTENT:
        return
    named = (
        found
        if found in REFUSED_CONTENT
        else (UNREADABLE_FORMATS.get(suffix) or found or (f"{suffix[1:].upper()} file" if suffix else "unknown"))
    )
    raise InputError(
        f"vidrop cannot use {named} images.",
        detail=f"format {named} (extension {suffix or 'none'}, content {found or 'unknown'}); vidrop reads "
        f"{', '.join(sorted(READABLE_SUFFIXES))}",
        fix=EXPORT_FIX,
    )


def load_image(source: Path | bytes, *, max_pixels: int, name: str | None = None) -> Image.Image:
    """Decode an image fully (an animated one: its first frame), apply its EXIF rotation, make it 8-bit RGB.
    source is a file or the file's bytes (then name is the file's name, for its extension)."""
    return open_image(source, max_pixels=max_pixels, name=name)[0]


def open_image(source: Path | bytes, *, max_pixels: int, name: str | None = None) -> tuple[Image.Image, ImageFacts]:
    """`load_image` and the facts of the file it came from."""
    if isinstance(source, bytes):
        head, opened_from = source[:64], io.BytesIO(source)
        check_readable(name or "", head)
    else:
        check_readable_name(source)
        opened_from = source
    try:
        with Image.open(opened_from) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise InputError(
                    f"The image is too large ({width}×{height} pixels).",
                    detail=f"{width * height} pixels exceeds limits.max_image_pixels={max_pixels}",
                    fix="Export the image at a smaller size; the video is far smaller anyway.",
                )
            facts = ImageFacts(opened.format or "unknown", width, height, getattr(opened, "n_frames", 1))
            opened.seek(0)
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return to_rgb(image), facts
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        found = sniff_format(_head_of(source))
        raise InputError(
            "The file is not an image vidrop can read."
            if found is None
            else f"The file is not an image vidrop can read: it starts like a {found} but does not decode.",
            detail=f"format {found or 'unknown'}; {type(exc).__name__}: {exc}",
            fix="Export it again as PNG or JPEG; check that the copy finished and the file is not damaged.",
        ) from None


def _head_of(source: Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:64]
    try:
        with open(source, "rb") as handle:
            return handle.read(64)
    except OSError:
        return b""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from palette, alpha (on white), CMYK, 16-bit and greyscale images."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping to white.
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def fit_image(image: Image.Image, width: int, height: int, fit: Literal["crop", "pad"]) -> Image.Image:
    """Fit to width×height keeping the aspect ratio: crop fills and cuts the edges, pad letterboxes."""
    if fit == "crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
    return ImageOps.pad(image, (width, height), method=Image.Resampling.LANCZOS, color=(0, 0, 0))
