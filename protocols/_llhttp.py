"""ctypes binding to llhttp (Node.js's HTTP parser), as compiled into httptools' extension module.

httptools' Python API cannot say where in a chunk a message ended, and cannot be told that a
response answers a HEAD request. llhttp's C API can: a callback returning HPE_PAUSED stops
``llhttp_execute`` at that exact byte (``llhttp_get_error_pos``), and ``on_headers_complete``
returning 1 means "no body". httptools exports llhttp's functions, so this module calls them
directly; only llhttp's public API is used, never its structs' fields.

The callback table (``llhttp_settings_t``) is the one part whose layout is version-specific: this
binding is for llhttp 9.3's 25 callbacks, and ``load()`` verifies that count at import time
(``llhttp_settings_init`` zeroes exactly the table's size) so a different llhttp fails loudly.
"""

from __future__ import annotations

import ctypes
from typing import Final

import httptools.parser.parser as _httptools_parser

# llhttp_type_t
REQUEST: Final = 1
RESPONSE: Final = 2

# llhttp_errno_t values this package acts on
HPE_OK: Final = 0
HPE_CLOSED_CONNECTION: Final = 5
HPE_INVALID_EOF_STATE: Final = 14
HPE_PAUSED: Final = 21
HPE_PAUSED_UPGRADE: Final = 22

# on_headers_complete return values (besides HPE_PAUSED)
NO_BODY: Final = 1
NO_BODY_UPGRADE: Final = 2

# slots of llhttp 9.3's llhttp_settings_t that the framers use
ON_URL: Final = 2
ON_STATUS: Final = 3
ON_HEADERS_COMPLETE: Final = 10
ON_MESSAGE_COMPLETE: Final = 12
SETTINGS_SLOTS: Final = 25

# llhttp_t is ~100 bytes in 9.x; a larger buffer costs nothing and survives added fields
PARSER_SIZE: Final = 512

Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
DataCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
Settings = ctypes.c_void_p * SETTINGS_SLOTS


class LlhttpUnavailable(ImportError):
    """The llhttp in httptools is missing or has a callback table this binding does not know."""


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_httptools_parser.__file__)
    p, vp, sz, i = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    signatures: dict[str, tuple[list[type], type | None]] = {
        "llhttp_init": ([p, i, vp], None),
        "llhttp_settings_init": ([vp], None),
        "llhttp_execute": ([p, vp, sz], i),
        "llhttp_finish": ([p], i),
        "llhttp_resume": ([p], None),
        "llhttp_resume_after_upgrade": ([p], None),
        "llhttp_get_error_pos": ([p], vp),
        "llhttp_get_error_reason": ([p], ctypes.c_char_p),
        "llhttp_errno_name": ([i], ctypes.c_char_p),
        "llhttp_method_name": ([i], ctypes.c_char_p),
        "llhttp_get_method": ([p], ctypes.c_uint8),
        "llhttp_get_status_code": ([p], ctypes.c_int),
        "llhttp_get_http_major": ([p], ctypes.c_uint8),
        "llhttp_get_http_minor": ([p], ctypes.c_uint8),
        "llhttp_get_upgrade": ([p], ctypes.c_uint8),
        "llhttp_should_keep_alive": ([p], i),
        "llhttp_message_needs_eof": ([p], i),
    }
    try:
        for name, (args, result) in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, result
    except AttributeError as exc:
        raise LlhttpUnavailable(f"httptools' llhttp lacks {exc}") from None
    probe = (ctypes.c_ubyte * (8 * SETTINGS_SLOTS + 64))(*[0xFF] * (8 * SETTINGS_SLOTS + 64))
    lib.llhttp_settings_init(probe)
    slots = sum(1 for b in probe if b == 0) // ctypes.sizeof(ctypes.c_void_p)
    if slots != SETTINGS_SLOTS:
        raise LlhttpUnavailable(f"httptools' llhttp has {slots} callbacks, this binding knows "
                                f"llhttp 9.3's {SETTINGS_SLOTS}; update protocols/_llhttp.py")
    return lib


lib: Final = _load()
_method_names: dict[int, str] = {}


def method_name(code: int) -> str:
    """The method llhttp parsed, by its enum value (which llhttp itself produced: an unknown value
    would make llhttp_method_name abort the process)."""
    name = _method_names.get(code)
    if name is None:
        name = _method_names[code] = (lib.llhttp_method_name(code) or b"?").decode("ascii")
    return name


def error_pos(parser: ctypes.Array[ctypes.c_char]) -> int:
    """Address of the byte where the last ``llhttp_execute`` stopped (paused or failed)."""
    return lib.llhttp_get_error_pos(parser) or 0


def error_text(parser: ctypes.Array[ctypes.c_char], errno: int) -> str:
    name = (lib.llhttp_errno_name(errno) or b"?").decode("ascii", "replace")
    reason = (lib.llhttp_get_error_reason(parser) or b"").decode("ascii", "replace")
    return f"{reason} ({name})" if reason else name
