"""Errors that the rule scripts report as one line (emseg.runner), importable without torch,
pandas or scipy: every job imports this module, so it stays light."""


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the key."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
