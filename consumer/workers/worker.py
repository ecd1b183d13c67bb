"""The worker's side of WORKERS > 1: a worker is `run` with an internal metrics port, its index on every log
line, its own static member id, and a stop when the supervisor goes away (its stdin pipe closes)."""

from __future__ import annotations

import logging
import os
import sys
import threading

from consumer.settings import Settings

log = logging.getLogger(__name__)


def become_worker(settings: Settings, index: int, port: int, stop: threading.Event) -> Settings:
    """Settings and process set-up of worker `index`: its internal port, its log field, and a stop when
    the supervisor goes away."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    threading.Thread(target=_stop_when_orphaned, args=(stop,), name="supervisor-watch", daemon=True).start()
    return worker_settings(settings, index, port)


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """Worker `index`'s settings: its internal port on loopback, one process, and its own static member id (two members
    of a group with one group.instance.id fence each other off)."""
    # Only the supervisor reads a worker's endpoints, over loopback: METRICS_HOST is the supervisor's.
    update: dict[str, object] = {"metrics_port": port, "metrics_host": "127.0.0.1", "workers": 1}
    if settings.kafka_group_instance_id:
        update["kafka_group_instance_id"] = f"{settings.kafka_group_instance_id}-{index}"
    return settings.model_copy(update=update)


class _WorkerField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._index
        return True


def _stop_when_orphaned(stop: threading.Event) -> None:
    # The supervisor never writes: this returns when its end of the pipe closes. A raw read, not
    # sys.stdin's buffered one, whose lock a daemon thread would still hold at interpreter exit.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    if not stop.is_set():
        log.warning("supervisor gone; stopping")
        stop.set()
