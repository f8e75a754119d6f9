"""What a message may carry: the file types Gmail refuses, and its size after base64.

Gmail refuses messages carrying these file types, also inside archives ("Some file types are
blocked", support.google.com/mail/answer/6590); App Engine's mail documentation lists the older
subset and the same rule for ZIP contents. mailjobs refuses them at POST, not at send.
"""
from __future__ import annotations

import io
import zipfile
from typing import BinaryIO

BLOCKED_EXTENSIONS = frozenset(
    ".ade .adp .apk .appx .appxbundle .bat .cab .chm .cmd .com .cpl .diagcab .diagcfg .diagpack "
    ".dll .dmg .ex .ex_ .exe .hta .ins .isp .iso .jar .jnlp .js .jse .lib .lnk .mde .msc .msi "
    ".msix .msixbundle .msp .mst .nsh .pif .ps1 .scr .sct .shb .sys .vb .vbe .vbs .vhd .vxd .wsc "
    ".wsf .wsh .xll".split())

# Gmail's limit for a whole message (the Gmail API's upload endpoint: 35 MiB); attachments are
# base64 in it, 4/3 of their size plus a CRLF every 76 characters.
MESSAGE_MAX_BYTES = 36_700_160
# Headers, boundaries and part headers of a message, at most (an estimate with room to spare).
MESSAGE_OVERHEAD = 16 * 1024
PART_OVERHEAD = 1024
# A ZIP's names are read when the archive is at most this big and has at most this many entries.
ZIP_MAX_ENTRIES = 10_000
NESTED_ZIP_MAX_BYTES = 8 * 1024 * 1024   # a ZIP inside a ZIP is opened up to this size


def base64_size(n: int) -> int:
    """Bytes of `n` bytes in base64 with CRLF line ends every 76 characters."""
    encoded = 4 * ((n + 2) // 3)
    return encoded + 2 * ((encoded + 75) // 76)


def text_size(text: str | None) -> int:
    """Bytes of a text part at most: base64 of its UTF-8 (or less, as 7bit)."""
    if text is None:
        return 0
    return base64_size(len(text.encode("utf-8", "surrogatepass")))


def blocked_name(filename: str) -> str | None:
    """The blocked extension `filename` ends with, or None (case-insensitive; trailing dots
    and spaces, which Windows ignores, are ignored too)."""
    name = filename.strip().rstrip(". ").lower()
    dot = name.rfind(".")
    if dot < 0:
        return None
    ext = name[dot:]
    return ext if ext in BLOCKED_EXTENSIONS else None


def is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def blocked_in_zip(data: bytes | BinaryIO, depth: int = 2) -> str | None:
    """The first blocked name inside a ZIP archive (and ZIPs inside it, `depth` levels), or
    "an encrypted archive" for one whose names cannot be read; None if it is fine or not a ZIP.
    Only the central directory is read (names), plus nested ZIPs up to the archive's size."""
    if isinstance(data, bytes):
        if not is_zip(data):
            return None
        data = io.BytesIO(data)
    else:
        data.seek(0)
        if not is_zip(data.read(4)):
            return None
    try:
        with zipfile.ZipFile(data) as archive:
            infos = archive.infolist()
            if len(infos) > ZIP_MAX_ENTRIES:
                return f"an archive of more than {ZIP_MAX_ENTRIES} files"
            for info in infos:
                if info.flag_bits & 0x1:
                    return f"an encrypted archive ({info.filename})"
                ext = blocked_name(info.filename)
                if ext:
                    return f"{info.filename} inside the archive"
            if depth > 1:
                for info in infos:
                    if info.filename.lower().endswith(".zip") \
                            and info.file_size <= NESTED_ZIP_MAX_BYTES:
                        inner = blocked_in_zip(archive.read(info), depth - 1)
                        if inner:
                            return f"{inner} in {info.filename}"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError,
            EOFError):
        return None   # not readable as a ZIP: Gmail treats it as an opaque file too
    return None
