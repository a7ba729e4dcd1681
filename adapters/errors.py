"""`AdapterError`: the one error type of the adapters (a `core.errors.UserError`: exit 2, one line)."""

from __future__ import annotations

from core.errors import UserError


class AdapterError(UserError):
    """A clear, user-facing failure of an adapter (bad checkpoint, class mismatch, missing file)."""
