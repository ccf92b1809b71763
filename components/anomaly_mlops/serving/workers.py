"""Several server processes in one pod (``serve --workers N``): forked after the model is
loaded, so its arrays are shared copy-on-write, each listening on the port with SO_REUSEPORT
(the kernel spreads new connections evenly). The parent only supervises:

- SIGTERM/SIGINT is passed to every worker, which drains as a single server does
  (lean_server.GRACEFUL_SHUTDOWN_S); a worker still running after that is killed.
- A worker that dies is started again (its connections are lost, the others serve on); one
  that keeps dying (``MAX_RESTARTS`` within ``RESTART_WINDOW_S``) stops the server with exit 6,
  so the pod restarts instead of serving on fewer cores unnoticed.
- Metrics: prometheus_client's multiprocess mode in a private directory, so a scrape that
  reaches any worker reports the sum over all of them (a dead worker's gauges are dropped).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable

from anomaly_mlops.errors import ServeError

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# A worker's own drain (lean_server.GRACEFUL_SHUTDOWN_S) plus a margin, then SIGKILL.
STOP_GRACE_S = 12.0


def supervise(workers: int, run: Callable[[], None], port_holder=None) -> None:
    """Fork ``workers`` processes that each call ``run()``; return once all have stopped
    after SIGTERM/SIGINT. Raises ServeError when a worker keeps dying. ``port_holder``: the
    parent's socket on the port (bound, not listening), closed at SIGTERM."""
    metrics_dir = tempfile.mkdtemp(prefix="anomaly-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children: dict[int, int] = {}
    deaths: deque[float] = deque()
    stopping = False

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                # uvicorn drains on SIGTERM, then re-raises it into this handler: an exit.
                for number in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(number, lambda *_: sys.exit(0))
                _use_multiprocess_metrics()
                run()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - reported, and the exit code tells the parent
                log.exception("worker %d stopped on an error", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def stop(*_) -> None:
        nonlocal stopping
        stopping = True
        if port_holder is not None:
            port_holder.close()
        for pid in list(children):
            _signal(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for index in range(workers):
            start(index)
        log.info("%d worker processes: %s", workers, sorted(children))
        deadline = None
        while children:
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            pid, status = _poll()
            if pid == 0:  # polled, so a SIGTERM's handler runs while waiting
                if deadline is not None and time.monotonic() >= deadline:
                    for left in children:
                        log.warning("worker %d did not stop within %.0f s: killed", left, STOP_GRACE_S)
                        _signal(left, signal.SIGKILL)
                    deadline = time.monotonic() + 5
                time.sleep(0.1)
                continue
            index = children.pop(pid, None)
            if index is None:
                continue
            _forget_metrics(pid)
            if stopping:
                continue
            log.warning("worker %d (pid %d) stopped (%s): starting it again", index, pid, _describe(status))
            now = time.monotonic()
            deaths.append(now)
            while deaths and now - deaths[0] > RESTART_WINDOW_S:
                deaths.popleft()
            if len(deaths) > MAX_RESTARTS:
                stop()
                raise ServeError(
                    f"server workers died {len(deaths)} times within {RESTART_WINDOW_S:.0f} s "
                    f"(the last: {_describe(status)}); stopping"
                )
            start(index)
    finally:
        for pid in list(children):
            _signal(pid, signal.SIGKILL)
            _reap(pid)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _use_multiprocess_metrics() -> None:
    """Metric values in files of PROMETHEUS_MULTIPROC_DIR (prometheus_client chose its value
    class at import, which may have been in the parent before that was set)."""
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()


def _forget_metrics(pid: int) -> None:
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # noqa: BLE001 - only the dead worker's live gauges are left
        log.debug("could not drop the metrics of worker %d", pid, exc_info=True)


def _poll() -> tuple[int, int]:
    """(pid, status) of a worker that stopped, else (0, 0)."""
    try:
        return os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0, 0


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
