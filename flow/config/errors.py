"""ConfigError: every way a user can get a job wrong, as one line naming the file, the key and
what was expected (the CLI prints it and exits 2, never a traceback)."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A problem in a job file that the user must fix; printed as one line, exit code 2."""

    def __init__(self, file: str | Path, key: str, expected: str):
        self.file, self.key, self.expected = str(file), key, expected
        super().__init__(f"{file}: {key}: {expected}" if key else f"{file}: {expected}")
