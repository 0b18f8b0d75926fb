"""A SHA-256 whose running state can be saved and restored: what lets an upload begun on
one ``lamina serve`` replica be continued on another when its bytes already sit in S3
parts, which no S3 can read back before the upload is completed.

``hashlib`` objects neither pickle nor expose their state, so this calls libcrypto's
low-level interface through ctypes (``SHA256_Init``/``Update``/``Final`` over the public
``SHA256_CTX`` of ``<openssl/sha.h>``; deprecated in OpenSSL 3 but exported, and the same
assembly — SHA-NI where the CPU has it — that ``hashlib`` runs).  The saved state is the
112-byte struct, valid between replicas on the same architecture (its words are in host
byte order); ``restore`` refuses one of another size.  distribution does the same with
Go's ``encoding.BinaryMarshaler`` on sha256 (registry/storage/blobwriter_resumable.go).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from lamina.errors import StoreError

CTX_SIZE = 112      # unsigned int h[8], Nl, Nh, data[16], num, md_len

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _crypto() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
            try:
                lib = ctypes.CDLL(name)
                for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                    fn.restype = ctypes.c_int
            except (OSError, AttributeError) as e:
                raise StoreError(f"libcrypto's SHA256 is not available ({e}): resumable "
                                 "uploads to S3 need it") from None
            lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            _lib = lib
        return _lib


class ResumableSha256:
    def __init__(self, state: bytes | None = None) -> None:
        self._ctx = ctypes.create_string_buffer(CTX_SIZE)
        if state is None:
            _crypto().SHA256_Init(self._ctx)
        else:
            if len(state) != CTX_SIZE:
                raise StoreError("a saved SHA-256 state of the wrong size")
            ctypes.memmove(self._ctx, state, CTX_SIZE)

    def update(self, data: bytes) -> None:
        # ctypes drops the GIL during the call: two uploads hash on two cores
        _crypto().SHA256_Update(self._ctx, data, len(data))

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        ctx = ctypes.create_string_buffer(self._ctx.raw, CTX_SIZE)   # Final ends a copy
        out = ctypes.create_string_buffer(32)
        _crypto().SHA256_Final(out, ctx)
        return out.raw.hex()
