"""Errors the trainers raise: each one a message a person can act on."""


class TrainersError(Exception):
    """Base: the CLI prints the message and exits non-zero."""

    exit_code = 1


class UnknownPipelineError(TrainersError):
    """No pipeline package of that name under ``trainers/pipelines``."""

    exit_code = 2


class ParamError(TrainersError):
    """A param name or value the pipeline does not accept."""

    exit_code = 2


class DataError(TrainersError):
    """A snapshot that is missing, unreadable or does not match the pipeline's schema."""

    exit_code = 2


class RegistryError(TrainersError):
    """A model, version, alias or run that the registry does not hold."""
