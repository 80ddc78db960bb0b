"""Producer benchmark: generator speed, full-speed delivery per codec, and rate accuracy.

Run against a live broker (`pipeline-project kafka start`, or PIPELINE_KAFKA_BOOTSTRAP):
    python -m benchmarks.produce_bench [--count 1000000] [--seconds 10]
Each producer run goes through the real CLI into a fresh topic, which is deleted afterwards.
Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from confluent_kafka.admin import AdminClient

from pipeline_project.events.generator import EventGenerator
from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.settings import Settings


def generator_rate(count: int, mixed: bool = False) -> float:
    """Events per second of the generator alone, one core, pools already built.

    `mixed` adds 1 % bad, 1 % duplicate and 5 % late events, a realistic background of defects.
    """
    ratios = (0.01, 0.01, 0.05) if mixed else (0.0, 0.0, 0.0)
    gen = EventGenerator(1, bad_ratio=ratios[0], duplicate_ratio=ratios[1], late_ratio=ratios[2])
    gen.batch(10_000)  # warm up caches
    began = time.perf_counter()
    done = 0
    while done < count:
        done += len(gen.batch(10_000))
    return done / (time.perf_counter() - began)


def produce_run(settings: Settings, *flags: str) -> dict[str, Any]:
    """One `pipeline-project produce` run into a fresh topic; its JSON summary plus wall time."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(dataclasses.replace(settings, raw_topic=topic))
    cmd = [sys.executable, "-m", "pipeline_project.cli", "produce", "--topic", topic, *flags]
    began = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    finally:
        _delete(settings, topic)
    if done.returncode != 0:
        raise SystemExit(f"produce failed ({done.returncode}): {done.stderr.strip()}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = round(time.monotonic() - began, 2)
    return summary


# The defect-laden run the producer's goal names: 200k events, 5 % bad, 1 % duplicates, full speed.
DEFECT_FLAGS = tuple("--count 200000 --rate 0 --bad-ratio 0.05 --duplicate-ratio 0.01".split())


def defect_runs(
    settings: Settings, truth: bool, runs: int = 3, processes: int = 1
) -> dict[str, Any]:
    """Median delivered events/s of `runs` DEFECT_FLAGS runs, with or without a truth file."""
    rates = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            flags = (*DEFECT_FLAGS, "--processes", str(processes))
            if truth:
                flags = (*flags, "--truth", f"{tmp}/truth.jsonl")
            run = produce_run(settings, *flags)
            if truth:
                lines = sum(1 for _ in open(f"{tmp}/truth.jsonl", "rb"))
                if lines != run["delivered"]:
                    raise SystemExit(f"truth has {lines} lines for {run['delivered']} delivered")
        rates.append(run["events_per_s"])
    return {"median_eps": round(statistics.median(rates)), "runs_eps": rates}


def _delete(settings: Settings, topic: str) -> None:
    conf: dict[str, Any] = {**settings.kafka_common(), "logger": logging.getLogger(__name__)}
    admin = AdminClient(conf)
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)


def main(argv: list[str] | None = None) -> int:
    """Runs every measurement and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="events per full-speed run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rated run")
    parser.add_argument("--codecs", default="zstd,lz4", help="codecs to compare at full speed")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    figures: dict[str, Any] = {
        "generator_eps": round(generator_rate(300_000)),
        "generator_mixed_eps": round(generator_rate(300_000, mixed=True)),
    }
    print(f"generator alone:           {figures['generator_eps']:>10,} events/s")
    print(f"generator, 1% bad/dup:     {figures['generator_mixed_eps']:>10,} events/s")
    for codec in args.codecs.split(","):
        run = produce_run(
            settings, "--count", str(args.count), "--rate", "0", "--compression", codec
        )
        figures[f"full_speed_{codec}"] = run
        print(
            f"produce --rate 0 {codec:<5}:    {run['events_per_s']:>10,.0f} events/s delivered "
            f"({run['delivered']:,} in {run['seconds']} s, failed {run['failed']})"
        )
    for truth, processes in ((False, 1), (True, 1), (False, 2), (True, 2)):
        name = ("defects_with_truth" if truth else "defects") + (
            f"_{processes}_processes" if processes > 1 else ""
        )
        figures[name] = defect_runs(settings, truth, processes=processes)
        label = (" --truth" if truth else "") + (f" -p{processes}" if processes > 1 else "")
        print(
            f"produce 5% bad 1% dup{label:<12}: "
            f"{figures[name]['median_eps']:>10,} events/s delivered (median of 3: "
            f"{', '.join(f'{r:,.0f}' for r in figures[name]['runs_eps'])})"
        )
    for rate in (1_000, 20_000):
        run = produce_run(settings, "--rate", str(rate), "--duration", str(args.seconds))
        error = (run["send_rate"] - rate) / rate
        figures[f"rate_{rate}"] = {**run, "error": round(error, 4)}
        print(
            f"produce --rate {rate:<6}:    {run['send_rate']:>10,.1f} events/s sent "
            f"({error:+.2%}, {run['sent']:,} in {args.seconds:g} s, failed {run['failed']})"
        )
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
