"""Errors a user can fix. ``launch.py`` prints their message (no traceback) and exits with status 2."""


class UserError(Exception):
    """Bad input: a wrong path, a corrupt file, a bad override. The message says what to do."""


class MissingArtifactError(UserError, FileNotFoundError):
    """An upstream stage's artifact is missing (e.g. eval before train)."""
