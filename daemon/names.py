"""File names as filesystems have them: any bytes but "/" and NUL, at most 255 bytes a name.

Python hands a name's undecodable bytes over as lone surrogates (surrogateescape: byte 0xE9 is U+DCE9), so
one `str` holds any name and opens the file again. Nothing outside the process takes such a string: UTF-8
encoders refuse it. So what leaves the process gets a valid form:

- for people (logs, manifests, pages): `shown`, each undecodable byte as `\\xHH`, and in JSON the exact bytes
  as hex beside it (`printable`: key `K` gets `K_hex`), restored by `restored`;
- for the ledger's text columns: `ledger_text`, the same escapes made reversible (`from_ledger_text`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import PurePath
from typing import Any, Callable

NAME_MAX = 255  # bytes in one name: ext4, xfs, btrfs, NFS, SMB
HEX_SUFFIX = "_hex"
NO_HEX_KEYS = frozenset({"exception"})  # tracebacks: the escaped text says enough
_HASH_CHARS = 8
_LEDGER_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")
_AMBIGUOUS_AFTER_BACKSLASH = re.compile(r"\\|x[89a-f][0-9a-f]|[\udc80-\udcff]")


def is_undecodable(text: str) -> bool:
    """Whether the text holds bytes that are not UTF-8 (lone surrogates): no encoder outside takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def name_bytes(text: str) -> bytes:
    """The bytes of a name as the filesystem holds them."""
    return os.fsencode(text)


def shown(text: str) -> str:
    """The name for people: valid UTF-8, each undecodable byte as `\\xHH` (`caf\\xe9.png`)."""
    if not is_undecodable(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no filesystem made (from JSON text): its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def raw_hex(text: str) -> str | None:
    """The exact bytes of a name as hex, or None for text no filesystem made."""
    try:
        return text.encode("utf-8", "surrogateescape").hex()
    except UnicodeEncodeError:
        return None


def printable(value: Any) -> Any:
    """A JSON document with every undecodable string `shown`, and a `K_hex` beside each such value of key `K`."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, PurePath):
        return printable(str(value))
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            key = shown(key) if isinstance(key, str) else key
            if isinstance(item, PurePath):
                item = str(item)
            if isinstance(item, str) and is_undecodable(item):
                result[key] = shown(item)
                hexed = raw_hex(item)
                if hexed is not None and key not in NO_HEX_KEYS:
                    result[f"{key}{HEX_SUFFIX}"] = hexed
            else:
                result[key] = printable(item)
        return result
    if isinstance(value, list):
        return [printable(item) for item in value]
    if isinstance(value, tuple) and any(isinstance(item, str) and is_undecodable(item) for item in value):
        return [printable(item) for item in value]  # other tuples (a log event's exc_info) stay what they are
    return value


def restored(value: Any) -> Any:
    """A document `printable` wrote, read back: each `K` with a `K_hex` is the exact name again."""
    if isinstance(value, dict):
        result = {key: restored(item) for key, item in value.items()}
        for key in list(result):
            hexed = result.get(f"{key}{HEX_SUFFIX}") if isinstance(key, str) else None
            if isinstance(hexed, str) and isinstance(result[key], str):
                try:
                    result[key] = os.fsdecode(bytes.fromhex(hexed))
                except ValueError:
                    continue
                del result[f"{key}{HEX_SUFFIX}"]
        return result
    if isinstance(value, list):
        return [restored(item) for item in value]
    return value


def json_text(document: Any, *, default: Callable[[Any], Any] | None = None, **options: Any) -> str:
    """json.dumps as UTF-8 text that any reader takes, whatever names the document holds."""
    text = json.dumps(document, ensure_ascii=False, default=default, **options)
    if not is_undecodable(text):  # the common case costs one encode check
        return text
    wrapped = None if default is None else (lambda value: printable(default(value)))
    return json.dumps(printable(document), ensure_ascii=False, default=wrapped, **options)


def fit_stem(stem: str, max_bytes: int) -> str:
    """The stem itself if it has at most max_bytes, else shortened: cut at a character boundary (never in a
    character, nor before a combining mark) and given `~` and a short hash of the whole stem, so that two
    long names that start alike still differ."""
    if len(name_bytes(stem)) <= max_bytes:
        return stem
    digest = hashlib.sha256(name_bytes(stem)).hexdigest()[:_HASH_CHARS]
    room = max_bytes - 1 - _HASH_CHARS
    kept, size = 0, 0
    for char in stem:
        width = len(name_bytes(char))
        if size + width > room:
            break
        kept, size = kept + 1, size + width
    while kept and unicodedata.combining(stem[kept]):  # "e" + U+0301 stays one letter
        kept -= 1
    return f"{stem[:kept]}~{digest}"


def ledger_text(text: str) -> str:
    """A path as the ledger's text columns take it (valid UTF-8), reversibly.

    Undecodable bytes become `\\xHH` (hex digits 8-f, lowercase); a backslash becomes `\\\\` only where it
    would read as the start of such an escape. So every name without either, which is nearly every name,
    is stored as it is, also in ledgers written before this.
    """
    if "\\" not in text and not is_undecodable(text):
        return text
    parts = []
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            parts.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char == "\\" and _AMBIGUOUS_AFTER_BACKSLASH.match(text, index + 1):
            parts.append("\\\\")
        else:
            parts.append(char)
    return "".join(parts)


def from_ledger_text(text: str) -> str:
    """The path `ledger_text` stored."""
    if "\\" not in text:
        return text
    return _LEDGER_ESCAPE.sub(lambda match: "\\" if match[1] == "\\" else chr(0xDC00 + int(match[1][1:], 16)), text)
