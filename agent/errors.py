"""Errors that the command line turns into one clear line and a non-zero exit."""


class UserError(Exception):
    """A problem the user can fix (bad config value, missing or malformed file, unavailable device).

    The message must name the problem and the fix; `script/run.py` prints it as one line and exits with code 2.
    """


class ConfigError(UserError):
    """An impossible or inconsistent configuration value."""


class DataError(UserError):
    """A missing or malformed data file."""
