"""Typed errors. Each carries the one line a user needs to act; the CLI prints it, no traceback."""


class PipelineError(Exception):
    """Base class for every error the pipeline raises on purpose."""


class SettingsError(PipelineError):
    """A PIPELINE_* setting is malformed or points at something that does not exist."""


class BrokerError(PipelineError):
    """The local broker could not be set up, started, stopped or reached."""


class S3ServerError(PipelineError):
    """The local S3 server (versitygw) could not be built, started, stopped or reached."""


class KafkaUnavailableError(PipelineError):
    """The configured Kafka cluster did not answer within the bound."""


class LakePathError(PipelineError, ValueError):
    """A lake path from an invalid date, topic or table, or one that would leave the lake root."""


class FencingError(PipelineError):
    """Another writer committed this range (or an overlapping one) first: commit nothing."""


class LakeError(PipelineError):
    """The lake cannot be reached or used: bad URI, missing bucket, credentials, foreign table."""


class LockBusyError(PipelineError):
    """Another run holds the partition lock: this run must stop before touching anything."""


class LedgerError(PipelineError):
    """The intents/manifests ledger is inconsistent with what a run is about to do."""


class AccountingError(LedgerError):
    """Consumed offsets != lake rows + DLQ records + filtered rows: refuse to commit the range."""


class ContiguityError(LedgerError):
    """A range does not start at its partition's committed end, or overlaps a committed range."""


class AlreadyCommittedError(ContiguityError):
    """The exact range already has a manifest: re-running it is a no-op, not a data error."""


class DataLossError(PipelineError):
    """Offsets we still owed to the lake were deleted by retention before we read them."""


class DrainError(PipelineError):
    """An exact offset range could not be read completely within its bound."""


class DlqDeliveryError(PipelineError):
    """A record bound for the dead-letter queue was not confirmed by a delivery report."""


class StorageError(PipelineError, OSError):
    """The lake or state directory refused a write mid-run (disk full, read-only, quota, I/O)."""


class KafkaAuthorizationError(PipelineError):
    """The principal lacks an ACL the step needs; the message names the operation and resource."""


class TopicChangedError(PipelineError):
    """The Kafka topic is not the one the lake's commits were read from.

    Recreated, restored, or another cluster behind the same address: nothing is read until an
    operator decides (`topic new-epoch`).
    """


class HistoryError(LedgerError):
    """Where a partition's history starts is unknown or contradicted (a first range lost)."""
