"""Text files a person made (split lists, class lists, label and annotation JSON) are read as UTF-8.

Another encoding would turn ids and class names into other strings, or end in Python's decode
error that names no file: Latin-1 writes ``ä`` as one byte UTF-8 cannot decode, UTF-16 puts a NUL
byte beside every ASCII letter. Such a file is refused with one line naming it, the line that
fails, and the encoding it seems to be in where its bytes tell.
"""
from __future__ import annotations

import codecs
import os
from pathlib import Path

from stages.errors import InputError, MissingInputError

# UTF-32 LE's mark begins with UTF-16 LE's, so the longer marks are tried first
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32 LE"), (codecs.BOM_UTF32_BE, "UTF-32 BE"),
                    (codecs.BOM_UTF16_LE, "UTF-16 LE"), (codecs.BOM_UTF16_BE, "UTF-16 BE"))
SAVE_AS = "save it as UTF-8"


def read_utf8(path: str | os.PathLike, what: str = "text file") -> str:
    """The text of ``path`` (a UTF-8 byte-order mark dropped); else InputError naming it and ``what`` it is."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise MissingInputError(f"{path}: {what} not found") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    for mark, encoding in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            raise InputError(f"{path}: the {what} is {encoding} (its byte-order mark says so), not UTF-8; "
                             f"{SAVE_AS}")
    if data.count(0) * 4 >= len(data) > 0:  # a NUL in every 2nd or 4th byte: ASCII in UTF-16 or UTF-32
        raise InputError(f"{path}: the {what} is UTF-16 or UTF-32 without a byte-order mark (a quarter or more "
                         f"of its bytes are NUL), not UTF-8; {SAVE_AS}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}: line {line} of the {what} is not UTF-8 (byte 0x{data[exc.start]:02X}; "
                         f"Latin-1 or Windows-1252 text looks like this); {SAVE_AS}") from exc
