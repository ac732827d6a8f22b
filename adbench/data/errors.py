"""Errors about user input. Each message is one line naming the file or option at fault and the fix."""


class DataError(Exception):
    """Bad or missing input data, raised before any model work."""


class ConfigError(Exception):
    """A config option has a value that cannot work."""


class ScoreError(ConfigError):
    """A method produced NaN or inf scores; no metric or threshold is computed from them."""
