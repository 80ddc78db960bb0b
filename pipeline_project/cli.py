"""The `pipeline-project` command: the local broker, topics, the producer and audits.

Errors the pipeline raises on purpose (PipelineError) print as one line on stderr with a non-zero
exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from pipeline_project import __version__
from pipeline_project.errors import PipelineError
from pipeline_project.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _kafka_start(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.broker import LocalBroker
    from pipeline_project.kafka.topics import ensure_topics

    print(LocalBroker.from_settings(settings).start())
    if not args.no_topics:
        for line in ensure_topics(settings):
            print(line)
    return 0


def _kafka_stop(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.broker import LocalBroker

    print(LocalBroker.from_settings(settings).stop())
    return 0


def _kafka_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.broker import LocalBroker, kafka_version, metadata_ok
    from pipeline_project.kafka.topics import list_topics

    broker = LocalBroker.from_settings(settings)
    pid = broker.pid()
    reachable = metadata_ok(settings.bootstrap, timeout=5.0)
    state = "running" if reachable else "stopped"
    owner = f"local, pid {pid}" if pid else "not started by this project" if reachable else "local"
    print(f"broker:   {state} ({owner})")
    print(f"version:  Kafka {kafka_version()}")
    print(f"listener: {settings.bootstrap}")
    if not reachable:
        return 1
    topics = list_topics(settings)
    names = ", ".join(f"{name} ({n} partitions)" for name, n in sorted(topics.items())) or "none"
    print(f"topics:   {names}")
    return 0


def _topics_ensure(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka.topics import ensure_topics

    for line in ensure_topics(settings, raw_partitions=args.partitions):
        print(line)
    return 0


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.kafka import produce

    return produce.run(args, settings)


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_project.batch import reconcile

    return reconcile.main(settings, as_json=args.json)


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
    start.set_defaults(handler=_kafka_start)
    kafka_cmds.add_parser("stop", help="stop the broker (SIGTERM, then SIGKILL)").set_defaults(
        handler=_kafka_stop
    )
    kafka_cmds.add_parser(
        "status", help="running/stopped, version, listener and topics"
    ).set_defaults(handler=_kafka_status)

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
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
