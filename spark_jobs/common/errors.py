"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""


class PipelineError(Exception):
    """Bad input or state that the user can fix; the message names the culprit."""

    exit_code = 2


class ConfigError(PipelineError):
    """The configuration file or a --set override is invalid."""


class InputError(PipelineError):
    """An input (corpus, tokenizer, embeddings, a previous step's output) is missing or invalid."""


class TrainingError(PipelineError):
    """Training cannot continue (e.g. the loss became NaN)."""
