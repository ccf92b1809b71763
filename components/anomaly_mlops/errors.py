"""Exceptions with messages meant for the person running the step.

The CLI prints these without a traceback and exits with ``exit_code``.
"""


class AnomalyMLOpsError(Exception):
    exit_code = 2


class DataError(AnomalyMLOpsError):
    """Input data is missing, malformed or does not match the feature schema."""


class ArtifactError(AnomalyMLOpsError):
    """A model directory is incomplete, tampered with or incompatible."""


class ConfigError(AnomalyMLOpsError):
    """A required setting (secret, endpoint, parameter) is missing or invalid."""


class StorageError(AnomalyMLOpsError):
    """S3 could not be reached or refused an operation."""


class VersionConflictError(StorageError):
    """A released model version exists with different content."""


class GateFailedError(AnomalyMLOpsError):
    """The model did not meet the release thresholds."""

    exit_code = 3


class VerificationError(AnomalyMLOpsError):
    """Post-deployment verification of the served model failed."""

    exit_code = 4


class DeployError(AnomalyMLOpsError):
    """The Kubernetes API server or KServe refused or failed a deployment."""

    exit_code = 5


class ServeError(AnomalyMLOpsError):
    """The model server could not start serving (its port in use, an address not available)."""

    exit_code = 6
