"""The consumer a range is drained with: confluent-kafka's, with a native twin for the records.

`RangeConsumer` is a confluent-kafka Consumer (watermarks, positions, group commits, the Python
drain) that also opens, on first use, a reader of the native module (native/src/drain.rs) with
the same settings over the same librdkafka. The native reader fills contiguous buffers outside
the GIL instead of making a Python message object and bytes objects per record; the values go
to the native decoder as they are. Without the native module, with an older build of it, or
when the reader cannot be opened, the drain takes the Python path (same records, slower).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

try:
    from pipeline_project_native import Blobs, Reader  # type: ignore[attr-defined]
except ImportError:  # not built, or built before the native drain existed
    Blobs = Reader = None

log = logging.getLogger(__name__)


@cache
def librdkafka_path() -> str | None:
    """The librdkafka confluent-kafka loaded into this process, found in its memory map.

    The wheel ships its own copy (confluent_kafka.libs/); a source build links the system's.
    Either way the native reader opens that very file, so both clients share one library.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "librdkafka" in Path(path).name:
            return path
    return None


def drain_path(native: bool = True) -> str:
    """Which drain reads ranges here, for `health`."""
    if not native:
        return "python (PIPELINE_NATIVE_PARSE=false)"
    if Reader is None:
        return "python (native module not built, or built before its drain)"
    if librdkafka_path() is None:
        return "python (librdkafka not found in this process)"
    return "native"


def native_config(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Settings as rd_kafka_conf_set takes them: property names and text values."""
    return [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in config.items()]


class RangeConsumer(Consumer):
    """A Consumer that can also drain through the native reader (see the module docstring)."""

    def __init__(self, config: dict[str, Any], *, native: bool = True) -> None:
        super().__init__(config)
        self._config = config
        self._want_native = native and Reader is not None
        self._native: Any = None

    def native(self) -> Any:
        """The native reader (opened on first use), or None when the Python drain must run."""
        if self._native is None and self._want_native:
            library = librdkafka_path()
            try:
                if library is None:
                    raise RuntimeError("librdkafka not found in this process's memory map")
                self._native = Reader(library, native_config(self._config))
            except Exception as exc:  # noqa: BLE001 - the Python drain reads the same records
                log.warning("native drain unavailable (%s); the Python drain reads ranges", exc)
                self._want_native = False
        return self._native

    def close(self) -> None:
        """Closes the native reader too; its failure never keeps the Consumer open."""
        native, self._native, self._want_native = self._native, None, False
        try:
            if native is not None:
                native.close()
        except Exception as exc:  # noqa: BLE001 - e.g. still reading on another thread
            log.warning("native reader not closed cleanly: %s", exc)
        finally:
            super().close()
