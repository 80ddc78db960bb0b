"""The `pipeline-project` command: the local broker and S3 server, topics, producer and audits.

Errors the pipeline raises on purpose (PipelineError) print as one line on stderr with a non-zero
exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException

from pipeline_project import __version__
from pipeline_project.errors import PipelineError
from pipeline_project.settings import Settings

if TYPE_CHECKING:
    from pipeline_project.kafka.broker import LocalBroker

Handler = Callable[[argparse.Namespace, Settings], int]
SECURE_HELP = (
    "SASL_SSL + SCRAM-SHA-512 + ACLs (own storage under .local/kafka-secure): makes a CA, new "
    "client passwords, the least-privilege ACLs, and prints the PIPELINE_KAFKA_CONFIG files"
)


def _kafka_start(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.broker import LocalBroker
    from pipeline_project.kafka.topics import ensure_topics

    broker = LocalBroker.from_settings(settings, secure=args.secure)
    print(broker.start())
    if args.secure:
        return _secure_setup(args, settings, broker)
    if not args.no_topics:
        for line in ensure_topics(settings):
            print(line)
    return 0


def _secure_setup(args: argparse.Namespace, settings: Settings, broker: LocalBroker) -> int:
    """Topics and ACLs as the broker's principal, then the files to use; never a password."""
    from pipeline_project.kafka.acls import provision

    admin = broker.admin_properties()
    for line in provision(settings, broker.bootstrap, admin, topics=not args.no_topics):
        print(line)
    print("client properties (0600; passwords change at every start):")
    for name in ("pipeline", "producer", "admin"):
        print(f"  {name:9} {broker.files.properties(name)}")
    print(f"export PIPELINE_KAFKA_BOOTSTRAP={broker.bootstrap}")
    print(f"export PIPELINE_KAFKA_CONFIG={broker.files.properties('pipeline')}")
    return 0


def _kafka_stop(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.broker import LocalBroker

    print(LocalBroker.from_settings(settings, secure=args.secure).stop())
    return 0


def _kafka_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.access import explain_unreachable
    from pipeline_project.kafka.broker import LocalBroker, kafka_version, metadata_ok
    from pipeline_project.kafka.topics import list_topics

    broker = LocalBroker.from_settings(settings, secure=args.secure)
    pid = broker.pid()
    if args.secure and not settings.kafka_extra:  # no client login given: the broker's own
        settings = dataclasses.replace(settings, kafka_extra=broker.admin_properties())
    reachable = metadata_ok(settings.bootstrap, timeout=5.0, extra=settings.kafka_properties())
    cause = None if reachable else explain_unreachable(settings)
    state = "running" if reachable else "unreachable" if cause else "stopped"
    owner = f"local, pid {pid}" if pid else "not started by this project" if reachable else "local"
    print(f"broker:   {state} ({owner})")
    print(f"version:  Kafka {kafka_version()}")
    print(f"listener: {settings.bootstrap}")
    if not reachable:
        if cause:
            print(f"cause:    {cause}")
        return 1
    topics = list_topics(settings)
    names = ", ".join(f"{name} ({n} partitions)" for name, n in sorted(topics.items())) or "none"
    print(f"topics:   {names}")
    return 0


def _s3_start(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.s3server import LocalS3

    server = LocalS3.from_env()
    print(f"# {server.start()}")  # a comment, so `eval "$(pipeline-project s3 start)"` works
    for line in server.exports():
        print(line)
    return 0


def _s3_stop(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.s3server import LocalS3

    print(LocalS3.from_env().stop())
    return 0


def _s3_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.s3server import VERSITYGW_VERSION, LocalS3

    server = LocalS3.from_env()
    pid = server.pid()
    reachable = server.answers()
    owner = f"local, pid {pid}" if pid else "not started by this project" if reachable else "local"
    print(f"s3:       {'running' if reachable else 'stopped'} ({owner})")
    print(f"version:  versitygw {VERSITYGW_VERSION}")
    print(f"endpoint: {server.endpoint}")
    print(f"data:     {server.data_dir}")
    if not reachable:
        return 1
    print(f"bucket:   {server.bucket} ({'exists' if server.bucket_exists() else 'missing'})")
    return 0


def _s3_build(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.s3server import build_versitygw

    print(build_versitygw())
    return 0


def _add_s3_commands(commands: argparse._SubParsersAction) -> None:
    s3 = commands.add_parser(
        "s3", help="the local S3 server for the lake (versitygw, data in .local/s3/)"
    )
    s3_cmds = s3.add_subparsers(dest="s3_command", required=True, metavar="ACTION")
    s3_cmds.add_parser(
        "start", help="start the server (idempotent), create the bucket, print the exports"
    ).set_defaults(handler=_s3_start)
    s3_cmds.add_parser("stop", help="stop the server (SIGTERM, then SIGKILL)").set_defaults(
        handler=_s3_stop
    )
    s3_cmds.add_parser("status", help="running/stopped, endpoint, bucket").set_defaults(
        handler=_s3_status
    )
    s3_cmds.add_parser("build", help="(re)build versitygw into .local/bin with go").set_defaults(
        handler=_s3_build
    )


def _topics_ensure(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.topics import ensure_topics

    for line in ensure_topics(settings, raw_partitions=args.partitions):
        print(line)
    return 0


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka import produce

    return produce.run(args, settings)


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake import audit
    from pipeline_project.lake.location import lake_of

    return audit.main(lake_of(settings), as_json=args.json, settings=settings)


def _health(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project import health

    if args.serve is not None:
        return health.serve(settings, args.serve)
    return health.main(settings, as_json=args.json)


def _dlq_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.dlq.report import render_failing
    from pipeline_project.dlq.reprocess import failing_now

    wanted = set(args.category or ())
    failing = [
        m for m in failing_now(settings) if not wanted or (m.record and m.record.category in wanted)
    ]
    print(render_failing(failing, args.limit))
    return 0


def _dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.dlq.reprocess import Selection, reprocess

    if args.dlq_partition is None and (args.from_offset, args.to_offset) != (None, None):
        message = "--from-offset/--to-offset need --dlq-partition"
        print(f"pipeline-project: error: {message}", file=sys.stderr)
        return 2
    selection = Selection(
        categories=frozenset(args.category or ()),
        since=args.since,
        until=args.until,
        dlq_partition=args.dlq_partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
    )
    result = reprocess(settings, selection)
    print(json.dumps(result.counts(), sort_keys=True) if args.json else result.summary())
    return 0


def _utc_time(text: str) -> datetime:
    """ISO-8601; a time without a zone is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _add_dlq_commands(commands: argparse._SubParsersAction) -> None:
    dlq = commands.add_parser("dlq", help="the dead-letter queue: what fails and why, replay")
    dlq_cmds = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    inspect = dlq_cmds.add_parser(
        "inspect", help="what is failing now and why (records no reprocessing resolved yet)"
    )
    inspect.add_argument("--category", action="append", help="only this error category (repeat)")
    inspect.add_argument("--limit", type=int, default=20, metavar="N", help="rows shown (20)")
    inspect.set_defaults(handler=_dlq_inspect)
    replay = dlq_cmds.add_parser(
        "replay",
        help="repair and re-validate failing records now (all, or a slice); the rest wait",
        description="Runs the scheduled reprocess path now. With a slice, records outside it are "
        "re-sent unchanged and wait for a later run.",
    )
    replay.add_argument("--category", action="append", help="only this error category (repeat)")
    replay.add_argument("--since", type=_utc_time, help="source records that arrived at/after this")
    replay.add_argument("--until", type=_utc_time, help="source records that arrived before this")
    replay.add_argument("--dlq-partition", type=int, metavar="P", help="only this DLQ partition")
    replay.add_argument("--from-offset", type=int, metavar="A", help="DLQ offsets from A")
    replay.add_argument("--to-offset", type=int, metavar="B", help="DLQ offsets before B")
    replay.add_argument("--json", action="store_true", help="print the outcome counts as JSON")
    replay.set_defaults(handler=_dlq_replay)


def _loss_acknowledge(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.batch import loss

    for partition in args.partition:
        print(loss.acknowledge(settings, partition, args.reason).summary())
    return 0


def _loss_list(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.batch import loss

    notes = loss.acknowledged(settings)
    for note in notes:
        print(f"{note['range_id']}  {note['at']}  {note['run_id']}  {note['reason']}")
    if not notes:
        print("no data loss acknowledged")
    return 0


def _add_loss_commands(commands: argparse._SubParsersAction) -> None:
    loss = commands.add_parser(
        "loss", help="offsets deleted by retention before they reached the lake: move on, or list"
    )
    loss_cmds = loss.add_subparsers(dest="loss_command", required=True, metavar="ACTION")
    ack = loss_cmds.add_parser(
        "acknowledge",
        help="record a partition's deleted offsets as lost so ingestion resumes after them",
        description="Commits [committed end, low watermark) of each partition as a range with no "
        "records, after which runs resume at the low watermark. Nothing happens for a partition "
        "that lost nothing. The reason is kept in that commit of the table's log.",
    )
    ack.add_argument(
        "--partition", type=int, action="append", required=True, metavar="P", help="repeat"
    )
    ack.add_argument("--reason", required=True, help="why it is acceptable (kept with the record)")
    ack.set_defaults(handler=_loss_acknowledge)
    loss_cmds.add_parser("list", help="every acknowledged loss").set_defaults(handler=_loss_list)


def _topic_new_epoch(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.batch.epochs import new_epoch

    print(new_epoch(settings, args.topic, args.reason).summary())
    return 0


def _history_acknowledge(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.batch.epochs import acknowledge_start

    for partition in args.partition:
        print(acknowledge_start(settings, partition, args.reason, args.topic))
    return 0


def _add_history_commands(commands: argparse._SubParsersAction) -> None:
    topic = commands.add_parser(
        "topic", help="a topic recreated under the lake (deleted, restored, another cluster)"
    )
    topic_cmds = topic.add_subparsers(dest="topic_command", required=True, metavar="ACTION")
    epoch = topic_cmds.add_parser(
        "new-epoch",
        help="read a recreated topic anew from its low watermark, as a new epoch",
        description="Commits, per partition, the start of epoch n+1 at the topic's low watermark "
        "(app id <topic>@<n>-<partition>) and records the topic's new id. Refused when the topic "
        "has not changed. Reconcile accounts for every epoch.",
    )
    epoch.add_argument("topic", help="PIPELINE_RAW_TOPIC or PIPELINE_DLQ_TOPIC")
    epoch.add_argument("--reason", required=True, help="why (kept with the commit)")
    epoch.set_defaults(handler=_topic_new_epoch)
    history = commands.add_parser("history", help="where each partition's history starts")
    history_cmds = history.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    ack = history_cmds.add_parser(
        "acknowledge",
        help="accept that a partition's history starts at its first committed range",
        description="For reconcile's history_start problem: records, in a commit of its own, "
        "that the offsets below the partition's first committed range are not owed to the lake.",
    )
    ack.add_argument(
        "--partition", type=int, action="append", required=True, metavar="P", help="repeat"
    )
    ack.add_argument("--topic", help="default: PIPELINE_RAW_TOPIC")
    ack.add_argument("--reason", required=True, help="why (kept with the commit)")
    ack.set_defaults(handler=_history_acknowledge)


def _lake_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.migrate import migrate

    print(migrate(settings).summary())
    return 0


def _lake_stats(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.location import lake_of
    from pipeline_project.lake.stats import table_stats

    stats = table_stats(lake_of(settings), args.table)
    print(json.dumps(stats.to_json(), indent=2) if args.json else stats.render())
    return 0


def _lake_compact(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.location import lake_of
    from pipeline_project.lake.upkeep import compact

    day = date.fromisoformat(args.day) if args.day else None
    target = args.target_mb or settings.compact_target_mb
    result = compact(lake_of(settings), day=day, target_mb=target, table_name=args.table)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
    return 0


def _lake_vacuum(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.location import lake_of
    from pipeline_project.lake.upkeep import checkpoint, lake_tables, vacuum

    lake = lake_of(settings)
    hours = args.retention_hours or settings.vacuum_retention_hours  # argparse refuses 0
    tables = [args.table] if args.table else lake_tables(lake)
    if not tables:
        print(f"no Delta table in the lake {lake.describe()}")
    for table in tables:
        print(vacuum(lake, retention_hours=hours, table_name=table, dry_run=args.dry_run).render())
        if not args.dry_run:
            print(f"{table}: checkpoint at version {checkpoint(lake, table)}")
    return 0


def _lake_expire(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.lake.location import lake_of
    from pipeline_project.lake.upkeep import RETAINED_TABLES, expire_days, retention_cutoff

    if settings.lake_retention_days is None:
        print("PIPELINE_LAKE_RETENTION_DAYS is not set: the lake keeps every day")
        return 0
    lake = lake_of(settings)
    cutoff = retention_cutoff(settings.lake_retention_days)
    for table in RETAINED_TABLES:
        print(expire_days(lake, cutoff, table).render())
    return 0


def _day(text: str) -> str:
    """--day: YYYY-MM-DD, or argparse's one-line usage error."""
    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None
    return text


def _positive(text: str) -> int:
    """A whole number of at least 1, or argparse's one-line usage error."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _add_upkeep_commands(lake_cmds: argparse._SubParsersAction) -> None:
    comp = lake_cmds.add_parser(
        "compact",
        help="rewrite a day's small files into files near the target size (Delta optimize)",
        description="Safe while ingestion runs: readers see the small files or the compacted "
        "ones, never both, and no range commit conflicts with it.",
    )
    comp.add_argument(
        "--day", type=_day, help="YYYY-MM-DD (default: every day with 8+ small files)"
    )
    comp.add_argument(
        "--target-mb",
        type=_positive,
        help="target file size in MiB (default PIPELINE_COMPACT_TARGET_MB)",
    )
    comp.add_argument("--table", default="events", help="events (default) or sessions")
    comp.add_argument("--json", action="store_true", help="print JSON")
    comp.set_defaults(handler=_lake_compact)
    vac = lake_cmds.add_parser(
        "vacuum",
        help="delete files no commit references, older than the retention; then checkpoint",
    )
    vac.add_argument(
        "--retention-hours",
        type=_positive,
        help="at least 1 (default PIPELINE_VACUUM_RETENTION_HOURS, 168)",
    )
    vac.add_argument("--table", help="one table (default: every table of the lake)")
    vac.add_argument("--dry-run", action="store_true", help="list, do not delete")
    vac.set_defaults(handler=_lake_vacuum)
    lake_cmds.add_parser(
        "expire",
        help="delete days older than PIPELINE_LAKE_RETENTION_DAYS (one Delta commit per table)",
        description="reconcile then reports the deleted rows' offsets as expired, not missing. "
        "The files stay until vacuum.",
    ).set_defaults(handler=_lake_expire)


def _add_lake_commands(commands: argparse._SubParsersAction) -> None:
    lake = commands.add_parser(
        "lake", help="the Delta tables: migrate, stats, compact, vacuum, expire"
    )
    lake_cmds = lake.add_subparsers(dest="lake_command", required=True, metavar="ACTION")
    lake_cmds.add_parser(
        "migrate",
        help="turn a lake of the earlier file-and-manifest layout into the Delta table, in place",
        description="Adopts every manifest-listed file (no rewrite) and commits each range's "
        "record with its end offset, so ingestion goes on from there. Safe to re-run.",
    ).set_defaults(handler=_lake_migrate)
    stats = lake_cmds.add_parser("stats", help="files, rows and bytes per day of a table")
    stats.add_argument("--table", default="events", help="events (default) or sessions")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_lake_stats)
    _add_upkeep_commands(lake_cmds)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each leaf sets `handler`."""
    parser = argparse.ArgumentParser(prog="pipeline-project", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = commands.add_parser(
        "kafka", help="the local Kafka broker (KRaft, one node, data in .local/)"
    )
    kafka_cmds = kafka.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")
    start = kafka_cmds.add_parser(
        "start", help="start the broker (idempotent) and ensure the topics"
    )
    start.add_argument(
        "--no-topics", action="store_true", help="do not create the pipeline's topics"
    )
    start.add_argument("--secure", action="store_true", help=SECURE_HELP)
    start.set_defaults(handler=_kafka_start)
    stop = kafka_cmds.add_parser("stop", help="stop the broker (SIGTERM, then SIGKILL)")
    stop.add_argument("--secure", action="store_true", help="the secure broker (start --secure)")
    stop.set_defaults(handler=_kafka_stop)
    status = kafka_cmds.add_parser("status", help="running/stopped, version, listener and topics")
    status.add_argument("--secure", action="store_true", help="the secure broker (start --secure)")
    status.set_defaults(handler=_kafka_status)

    topics = commands.add_parser("topics", help="the pipeline's Kafka topics")
    topic_cmds = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    ensure = topic_cmds.add_parser(
        "ensure", help="create missing topics (never deletes or shrinks)"
    )
    ensure.add_argument("--partitions", type=int, default=6, help="partitions of the raw topic")
    ensure.set_defaults(handler=_topics_ensure)

    produce_parser = commands.add_parser("produce", help="generate Faker events into the raw topic")
    _add_produce_arguments(produce_parser)
    produce_parser.set_defaults(handler=_produce)

    rec = commands.add_parser("reconcile", help="prove every offset is accounted for exactly once")
    rec.add_argument("--json", action="store_true", help="print the report as JSON")
    rec.set_defaults(handler=_reconcile)

    health = commands.add_parser(
        "health",
        help="broker, lag, last ingest, DLQ rate, disk: exit 0 ok, 1 degraded, 2 down",
        description=(
            "One line per check (ok|warn|fail  name  detail). Thresholds: "
            "PIPELINE_HEALTH_MAX_LAG_RECORDS, PIPELINE_HEALTH_MAX_LAG_SECONDS, "
            "PIPELINE_HEALTH_MAX_INGEST_AGE_SECONDS, PIPELINE_HEALTH_MAX_DLQ_RATE, "
            "PIPELINE_HEALTH_WINDOW_SECONDS, PIPELINE_HEALTH_MIN_FREE_DISK_MB."
        ),
    )
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.add_argument(
        "--serve", type=int, metavar="PORT", help="serve the checks as Prometheus gauges instead"
    )
    health.set_defaults(handler=_health)
    _add_dlq_commands(commands)
    _add_loss_commands(commands)
    _add_history_commands(commands)
    _add_lake_commands(commands)
    _add_s3_commands(commands)
    return parser


def _add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline_project.kafka import produce

    produce.add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run the handler, turn PipelineError into one line and exit code 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args, Settings.from_env())
    except PipelineError as exc:
        print(f"pipeline-project: error: {exc}", file=sys.stderr)
        return 2 if args.handler is _health else 1  # health: a setting that cannot work is down
    except KafkaException as exc:
        from pipeline_project.health import config_error

        line = config_error(Settings.from_env(), exc)
        if line is None:
            raise
        print(f"pipeline-project: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pipeline-project ... | head`: the reader left, which is not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
