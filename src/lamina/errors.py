"""The one error family of lamina.

Every error a user can cause or meet carries a message they can act on; the CLI prints
``lamina: <message>`` and exits with the class's ``exit_code``, never a traceback.

    LaminaError                      exit 1   anything lamina reports on purpose
    ├── NotFound                     exit 2   an image, tag, blob or path that is not there
    ├── InvalidInput                 exit 3   the user's input cannot be used
    │   ├── InvalidReference                  a malformed image reference or digest
    │   ├── InvalidManifest                   JSON that is not a valid manifest/index/config
    │   ├── UnsafeArchive                     a tar that would write outside its target
    │   └── ExpansionExceeded                 a layer that decompresses past the limit
    ├── IntegrityError               exit 4   bytes that do not match their digest or size
    ├── StoreError                   exit 5   the local store cannot do what was asked
    │   ├── StoreBusy                          a lock or lease is held by someone else
    │   └── NoSpace                            the store's file system is full
    ├── TransportError               exit 6   a place images come from or go to failed
    └── Unsupported                  exit 7   valid input that lamina does not handle (yet)
"""

from __future__ import annotations


class LaminaError(Exception):
    """Base of every error lamina reports on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def context(self, prefix: str) -> LaminaError:
        """Return the same kind of error with a short context prepended (ggcr style)."""
        err = type(self).__new__(type(self))
        LaminaError.__init__(err, f"{prefix}: {self.message}")
        return err


class NotFound(LaminaError):
    exit_code = 2


class InvalidInput(LaminaError):
    exit_code = 3


class InvalidReference(InvalidInput):
    pass


class InvalidManifest(InvalidInput):
    pass


class UnsafeArchive(InvalidInput):
    pass


class ExpansionExceeded(InvalidInput):
    pass


class IntegrityError(LaminaError):
    exit_code = 4


class StoreError(LaminaError):
    exit_code = 5


class StoreBusy(StoreError):
    pass


class NoSpace(StoreError):
    """The store's file system is full; the message says how to free space."""


class TransportError(LaminaError):
    exit_code = 6


class Unsupported(LaminaError):
    exit_code = 7
