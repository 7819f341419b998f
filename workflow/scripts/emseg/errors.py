"""Errors of the training loop that the rule scripts report as one line, without importing torch."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
