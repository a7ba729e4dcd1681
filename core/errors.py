"""The one base class of every error a user can cause (bad input, config, arguments or state).

Every CXRFuse command turns a `UserError` (and the `ValueError`/`OSError` that library code raises
for bad files) into exit code 2 and a one-line message naming the file, row or field; anything
else is a bug and shows its traceback. Subclasses say where the error came from
(`convert.common.ConversionError`, `adapters.config.ConfigError`, `adapters.base.AdapterError`,
`pipeline.config.PipelineError`, ...).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, a bad config or argument, or a state the user must fix; the message says what and where."""
