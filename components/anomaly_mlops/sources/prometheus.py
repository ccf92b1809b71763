"""Training data from Prometheus (or Thanos Querier): one PromQL query per feature,
``query_range`` over a lookback window at a fixed step, aligned onto one time grid in
schema order. Windows longer than one query allows (11,000 points) are fetched in pieces.

A query may return one series (it then applies to every entity) or one series per entity,
told apart by a label (``instance``, ``pod``, ... : the ``entity`` column of the rows). A
query with no data, NaN/Inf samples, or more missing steps than allowed is a DataError
naming the feature, the query and the first bad timestamp.

Labels come from the cluster's own alert history (``alert_labels``): the steps where
``ALERTS{alertstate="firing", alertname=~"..."}`` has a sample are anomalous, for the
entity the alert names (the same label) or, when it names none, for every entity.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_mlops.errors import ConfigError, DataError
from anomaly_mlops.model.schema import ENTITY_COLUMN, TIMESTAMP_COLUMN, FeatureSchema
from anomaly_mlops.params import RETRAINING_LOOKBACK, read_token
from anomaly_mlops.redact import redact

log = logging.getLogger(__name__)

MAX_POINTS = 11_000  # Prometheus refuses more points per series in one query_range
MAX_ROWS_PER_SERIES = 2_000_000  # ~3.8 years at 60 s: beyond this, a config mistake
# One answer (one piece of one query) is read whole before it is parsed: bounded, so that a
# query matching thousands of series fails with advice instead of exhausting the step's memory.
# A piece answered larger is fetched again as halves, at most MAX_ANSWER_SPLITS times over (a
# fleet of a few hundred nodes at 60 s answers more than the bound for 11,000 steps).
MAX_ANSWER_BYTES = 64 * 2**20
MAX_ANSWER_SPLITS = 4
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ConfigError(f"durations look like 60s, 5m, 6h, 7d; got {text!r}")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def load_queries(path: str | Path) -> dict[str, str]:
    """A YAML/JSON mapping ``feature: PromQL``, in schema order."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"query file not found: {path}") from exc
    queries = data.get("queries", data) if isinstance(data, dict) else None
    if not isinstance(queries, dict) or not queries or not all(isinstance(v, str) for v in queries.values()):
        raise ConfigError(f"{path} must map each feature name to one PromQL string (optionally under 'queries:')")
    return {str(k): v for k, v in queries.items()}


class PrometheusClient:
    """``query_range`` with a bearer token, a CA bundle, pieces for long windows and
    one-line errors."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0, ca_bundle: str | None = None):
        import requests

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self._token = token
        if ca_bundle:
            if not Path(ca_bundle).is_file():
                raise ConfigError(f"CA bundle not found: {ca_bundle}")
            self.session.verify = ca_bundle
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _clean(self, text: str) -> str:
        """``text`` for an error message: credentials redacted, our token wherever it is echoed."""
        text = redact(text)
        return text.replace(self._token, "[redacted]") if self._token else text

    def range(self, promql: str, start: int, end: int, step_s: int, what: str, allow_empty: bool = False) -> list[dict]:
        """Every series the query returns: its ``metric`` labels and ``values``, a pair of
        arrays (times in seconds, samples), fetched in pieces of at most MAX_POINTS steps and
        joined per series. Each piece's samples become arrays as it arrives: 16 bytes a sample
        instead of some 190 as parsed JSON, so a fleet's fortnight fits the data step."""
        merged: dict[tuple, dict] = {}
        span = (MAX_POINTS - 1) * step_s
        pieces = []  # (start, end, halvings), fetched in time order
        piece_start = start
        while piece_start <= end:
            pieces.append((piece_start, min(end, piece_start + span), 0))
            piece_start = pieces[-1][1] + step_s
        pieces.reverse()
        while pieces:
            piece_start, piece_end, halvings = pieces.pop()
            try:
                answer = self._range_once(promql, piece_start, piece_end, step_s, what)
            except _AnswerTooLarge:
                steps = (piece_end - piece_start) // step_s + 1
                if halvings >= MAX_ANSWER_SPLITS or steps < 2:
                    raise
                middle = piece_start + (steps // 2) * step_s
                log.info("prometheus: %s: the answer for %d steps is too large; fetching them as halves", what, steps)
                pieces += [(middle, piece_end, halvings + 1), (piece_start, middle - step_s, halvings + 1)]
                continue
            for one in answer:
                key = tuple(sorted(one.get("metric", {}).items()))
                pieces_of = merged.setdefault(key, {"metric": one.get("metric", {}), "values": []})["values"]
                pieces_of.append(_samples_of(one["values"], what, promql))
        if not merged and not allow_empty:
            raise DataError(f"the query for {what} returned no data between {_iso(start)} and {_iso(end)}: {promql}")
        for one in merged.values():
            one["values"] = tuple(np.concatenate(part) for part in zip(*one["values"]))
        return list(merged.values())

    def _range_once(self, promql: str, start: int, end: int, step_s: int, what: str) -> list[dict]:
        status, text = self._get(
            "/api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step_s}, what
        )
        if status in (401, 403):
            raise DataError(
                f"Prometheus at {redact(self.url)} refused the request ({status}): pass a "
                "token that may read metrics (--token-file; in a pod the service account token, with "
                "cluster-monitoring-view for Thanos Querier)"
            )
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if status == 200 and not (isinstance(body, dict) and body.get("status") == "success"):
            raise DataError(
                f"Prometheus answered the query for {what} with something that is not a query result: "
                f"{self._clean(text[:200].decode('utf-8', 'replace'))}: {promql}"
            )
        if status != 200 or body.get("status") != "success":
            detail = (
                f"{body.get('errorType', '')}: {body.get('error', '')}"
                if isinstance(body, dict)
                else text[:200].decode("utf-8", "replace")
            )
            raise DataError(
                f"Prometheus refused the query for {what} ({status} {self._clean(str(detail))[:300]}): {promql}"
            )
        return _series_of(body, what, promql)

    def _get(self, path: str, params: dict, what: str) -> tuple[int, bytes]:
        """(status, body) of one GET, read whole within ``timeout_s`` in all (a server that
        trickles its answer is cut off at the deadline) and at most MAX_ANSWER_BYTES."""
        import requests

        timed_out = threading.Event()
        response = None

        def expire() -> None:
            timed_out.set()
            sock = getattr(getattr(getattr(response, "raw", None), "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # unblocks the read in progress
                except OSError:
                    pass

        too_slow = DataError(
            f"Prometheus at {redact(self.url)} did not answer the query for {what} within {self.timeout_s:.0f}s"
        )
        timer = threading.Timer(self.timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            try:
                response = self.session.get(f"{self.url}{path}", timeout=self.timeout_s, params=params, stream=True)
                chunks, size = [], 0
                for chunk in response.iter_content(1 << 16):
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise _AnswerTooLarge(
                            f"Prometheus answered more than {MAX_ANSWER_BYTES / 2**20:g} MiB for {what}, fetched in "
                            f"pieces of {int(params['end'] - params['start']) // int(params['step']) + 1} steps: "
                            "aggregate the query to fewer series (sum by the entity label), or a longer step"
                        )
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
            except requests.exceptions.SSLError as exc:
                raise DataError(
                    f"TLS to Prometheus at {redact(self.url)} failed (pass the service CA with --ca-bundle): "
                    f"{self._clean(str(exc))[:300]}"
                ) from exc
            except requests.RequestException as exc:
                if timed_out.is_set():
                    raise too_slow from exc
                raise DataError(
                    f"cannot reach Prometheus at {redact(self.url)}: {self._clean(str(exc))[:300]}"
                ) from exc
        finally:
            timer.cancel()
            if response is not None:
                response.close()


def _samples_of(values: list, what: str, promql: str) -> tuple[np.ndarray, np.ndarray]:
    """One series' [time, "value"] pairs (shape checked by _series_of) as arrays."""
    try:
        stamps = np.array([int(round(float(t))) for t, _ in values], dtype=np.int64)
        samples = np.array([float(v) for _, v in values], dtype=np.float64)  # "NaN", "+Inf" parse too
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"the query for {what} returned a sample that is not a number ({exc}): {promql}") from exc
    return stamps, samples


class _AnswerTooLarge(DataError):
    """An answer over MAX_ANSWER_BYTES: PrometheusClient.range fetches its piece as halves."""


def _series_of(body: dict, what: str, promql: str) -> list[dict]:
    """The matrix result of a query_range answer, its shape checked: a list of series, each
    with a ``metric`` object and ``values`` of [time, "value"] pairs."""
    data = body.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise DataError(f"Prometheus answered the query for {what} without a list of series in data.result: {promql}")
    for one in result:
        values = one.get("values") if isinstance(one, dict) else None
        if (
            not isinstance(values, list)
            or not isinstance(one.get("metric", {}), dict)
            or not all(isinstance(pair, list) and len(pair) == 2 for pair in values)
        ):
            raise DataError(
                f"Prometheus answered the query for {what} with a series that is not a metric and a list of "
                f"[time, value] pairs (a range query's matrix): {str(one)[:200]}: {promql}"
            )
    return result


def time_grid(lookback_s: int, step_s: int, end: float | None) -> np.ndarray:
    """Step-aligned Unix times ending at ``end`` (default now)."""
    if step_s <= 0 or lookback_s < step_s:
        raise ConfigError(f"need step > 0 and lookback >= step, got step {step_s}s and lookback {lookback_s}s")
    points = lookback_s // step_s + 1
    if points > MAX_ROWS_PER_SERIES:
        raise ConfigError(
            f"{points} steps per series is more than {MAX_ROWS_PER_SERIES}; raise the step or shorten the lookback"
        )
    end = math.floor((end if end is not None else time.time()) / step_s) * step_s
    return end - step_s * np.arange(points - 1, -1, -1, dtype=np.int64)


def fetch_range(
    url: str,
    queries: dict[str, str],
    *,
    lookback_s: int,
    step_s: int = 60,
    end: float | None = None,
    max_gap_steps: int = 0,
    token: str | None = None,
    timeout_s: float = 60.0,
    ca_bundle: str | None = None,
    entity_label: str | None = None,
) -> pd.DataFrame:
    """A frame with ``timestamp``, ``entity`` and one column per feature: one row per step
    and entity. A query with one series applies to every entity; a query with several is
    split by ``entity_label`` (default: the one label whose values tell its series apart)."""
    FeatureSchema(tuple(queries))  # validates the names
    grid = time_grid(lookback_s, step_s, end)
    client = PrometheusClient(url, token, timeout_s, ca_bundle)
    shared: dict[str, np.ndarray] = {}
    per_entity: dict[str, dict[str, np.ndarray]] = {}
    for feature, promql in queries.items():
        series = client.range(promql, int(grid[0]), int(grid[-1]), step_s, repr(feature))
        if len(series) == 1:
            shared[feature] = _align(feature, promql, series[0]["values"], grid, step_s, max_gap_steps)
        else:
            label = entity_label or _distinguishing_label(series, feature, promql)
            for one in series:
                name = one.get("metric", {}).get(label)
                if name is None:
                    raise DataError(
                        f"the query for {feature!r} returned a series without the entity label {label!r} "
                        f"({one.get('metric')}): {promql}"
                    )
                if feature in per_entity.setdefault(name, {}):
                    raise DataError(
                        f"the query for {feature!r} returned two series for {label}={name!r}; "
                        f"aggregate it by {label}: {promql}"
                    )
                per_entity[name][feature] = _align(feature, promql, one["values"], grid, step_s, max_gap_steps)
        log.info("prometheus: %s: %d series x %d steps", feature, len(series), len(grid))
    entities = sorted(per_entity) or [""]
    frames = []
    for entity in entities:
        columns = per_entity.get(entity, {})
        missing = [f for f in queries if f not in columns and f not in shared]
        if missing:
            raise DataError(
                f"entity {entity!r} has no series for {missing}; every query must return it or "
                "return one series for all"
            )
        frame = pd.DataFrame({f: columns.get(f, shared.get(f)) for f in queries})
        frame.insert(0, ENTITY_COLUMN, entity or "all")
        frame.insert(0, TIMESTAMP_COLUMN, pd.to_datetime(grid, unit="s", utc=True))
        frames.append(_within_samples(frame, list(queries), entity or "all"))
    result = pd.concat(frames).sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)
    if len(entities) > 1:
        log.info("prometheus: %d entities (%s)", len(entities), ", ".join(entities[:10]))
    return result


def _within_samples(frame: pd.DataFrame, features: list[str], entity: str) -> pd.DataFrame:
    """The entity's rows from the step where every feature has begun to the step where the
    first has ended (_align leaves the steps outside a feature's samples NaN); what is left
    out is logged, and an entity with no such step is refused."""
    complete = frame[features].notna().all(axis=1).to_numpy()
    if complete.all():
        return frame
    if not complete.any():
        raise DataError(
            f"entity {entity!r} has no step at which every feature has a sample (one begins after another "
            "ends); a longer --lookback, or queries that cover the same time"
        )
    kept = frame[complete]
    log.warning(
        "prometheus: entity %s has samples of every feature from %s to %s only: %d of %d steps left out "
        "(the window reaches before its metrics begin or after they end)",
        entity, kept[TIMESTAMP_COLUMN].iloc[0].isoformat(), kept[TIMESTAMP_COLUMN].iloc[-1].isoformat(),
        len(frame) - len(kept), len(frame),
    )  # fmt: skip
    return kept


def _distinguishing_label(series: list[dict], feature: str, promql: str) -> str:
    labels = set.intersection(*(set(s.get("metric", {})) for s in series))
    telling = sorted(name for name in labels if len({s["metric"][name] for s in series}) == len(series))
    preferred = [name for name in ("pod", "instance", "node") if name in telling]
    if preferred or telling:
        return (preferred or telling)[0]
    raise DataError(
        f"the query for {feature!r} returned {len(series)} series that no single label tells apart "
        f"(e.g. {[s.get('metric') for s in series[:3]]}); aggregate it by one label: {promql}"
    )


def alert_labels(
    client: PrometheusClient, alert_names: str, grid: np.ndarray, step_s: int, entity_label: str | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Per entity, the grid steps inside a firing interval of an alert matching the regex
    ``alert_names`` (key "" = alerts that name no entity: every entity), and a report."""
    # A step is firing when an ALERTS sample falls inside it: present_over_time over one
    # step (less a second, so a sample on the step boundary counts once), not the 5-minute
    # lookback a plain selector would answer from. Needs a step >= the rule evaluation interval.
    selector = f'ALERTS{{alertstate="firing", alertname=~"{alert_names}"}}'
    promql = f"present_over_time({selector}[{max(step_s - 1, 1)}s])"
    series = client.range(promql, int(grid[0]), int(grid[-1]), step_s, "alert history", allow_empty=True)
    firing: dict[str, np.ndarray] = {}
    intervals = 0
    seen: set[str] = set()
    for one in series:
        metric = one.get("metric", {})
        seen.add(metric.get("alertname", "?"))
        mask = np.isin(grid, one["values"][0])
        intervals += int(np.sum(np.diff(np.concatenate([[0], mask.astype(int)])) == 1))
        key = next(
            (
                metric[name]
                for name in ([entity_label] if entity_label else ["pod", "instance", "node"])
                if name and name in metric
            ),
            "",
        )
        firing[key] = firing.get(key, np.zeros(len(grid), dtype=bool)) | mask
    report = {
        "source": "alerts",
        "query": promql,
        "alerts_fired": sorted(seen),
        "intervals": intervals,
        "series": len(series),
    }
    return firing, report


def _align(feature, promql, values, grid, step_s, max_gap_steps) -> np.ndarray:
    """One series' samples (``values``: PrometheusClient.range's arrays) on the grid."""
    stamps, samples = values
    repeated = np.flatnonzero(np.diff(np.sort(stamps)) == 0)
    if repeated.size:
        raise DataError(
            f"the query for {feature!r} returned {repeated.size} sample(s) at a time it already had a sample for, "
            f"first at {_iso(np.sort(stamps)[repeated[0]])} (two sources joined behind a proxy?): {promql}"
        )
    bad = ~np.isfinite(samples)
    if bad.any():
        raise DataError(
            f"the query for {feature!r} returned {int(bad.sum())} NaN/Inf samples, first at "
            f"{_iso(stamps[bad][0])}: {promql}"
        )
    values = pd.Series(samples, index=stamps).reindex(grid).to_numpy()
    present = np.flatnonzero(~np.isnan(values))
    if not present.size:
        raise DataError(
            f"the query for {feature!r} has no sample between {_iso(grid[0])} and {_iso(grid[-1])}: {promql}"
        )
    # Steps before the first sample or after the last stay NaN (the window reaches before the
    # metric begins, or past a node that left): the caller leaves those rows out. A gap between
    # samples is refused unless short enough to fill.
    first, last = present[0], present[-1]
    inside = values[first : last + 1]
    missing = np.isnan(inside)
    if missing.any():
        runs = _longest_run(missing)
        if runs > max_gap_steps:
            raise DataError(
                f"the query for {feature!r} has {int(missing.sum())} missing steps of {len(grid)} "
                f"(longest gap {runs} steps of {step_s}s, first at {_iso(grid[first:][missing][0])}); "
                f"allowed gap: {max_gap_steps} steps: {promql}"
            )
        values[first : last + 1] = pd.Series(inside).ffill().to_numpy()
    return values


def _longest_run(mask: np.ndarray) -> int:
    longest = current = 0
    for value in mask:
        current = current + 1 if value else 0
        longest = max(longest, current)
    return longest


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(epoch)))


BUILT_IN_QUERIES = Path(__file__).with_name("queries") / "default.yaml"


@dataclass
class PrometheusSource:
    """Where and how to read training data (and labels) from Prometheus or Thanos Querier."""

    url: str
    queries: str | None = None  # a YAML/JSON file; None: the schema's built-in queries
    lookback: str = RETRAINING_LOOKBACK
    step: str = "60s"
    end: float | None = None
    max_gap_steps: int = 0
    token_file: str | None = None  # in a pod: /var/run/secrets/kubernetes.io/serviceaccount/token
    ca_bundle: str | None = None  # in-cluster Thanos Querier: the service CA
    entity_label: str | None = None
    alerts: str | None = None  # alertname regex: rows in their firing intervals are anomalous
    incidents: str | None = None  # CSV/Parquet of incident windows (start, end, entity), local or s3://


def fetch_prometheus(
    source: PrometheusSource, schema: FeatureSchema, fetch_frame=None
) -> tuple[pd.DataFrame, FeatureSchema, dict]:
    """The labelled (or explicitly unlabelled) frame, its schema and the labels report.
    ``fetch_frame(client, grid=, step_s=, max_gap_steps=)`` builds the frame instead of the
    queries (the platform's schema: sources.self_healing.fetch_platform_frame)."""
    from anomaly_mlops.sources.files import apply_labels, read_table

    if not source.url:
        raise ConfigError("the Prometheus source needs a URL (--prometheus-url)")
    token = read_token(source.token_file)
    lookback_s, step_s = parse_duration(source.lookback), parse_duration(source.step)
    grid = time_grid(lookback_s, step_s, source.end)
    client = PrometheusClient(source.url, token, ca_bundle=source.ca_bundle)
    if fetch_frame is not None:
        frame = fetch_frame(client, grid=grid, step_s=step_s, max_gap_steps=source.max_gap_steps)
    else:
        if source.queries is None and schema.features != FeatureSchema().features:
            raise ConfigError(
                "there are no built-in queries for this schema; pass --queries (built in: the default "
                "schema and self-healing-platform)"
            )
        queries = load_queries(source.queries or BUILT_IN_QUERIES)
        frame = fetch_range(
            source.url,
            queries,
            lookback_s=lookback_s,
            step_s=step_s,
            end=source.end,
            max_gap_steps=source.max_gap_steps,
            token=token,
            ca_bundle=source.ca_bundle,
            entity_label=source.entity_label,
        )
        schema = FeatureSchema(tuple(queries), schema.name if source.queries is None else None)
    firing, report = None, None
    if source.alerts:
        firing, report = alert_labels(client, source.alerts, grid, step_s, source.entity_label)
        if not report["alerts_fired"]:
            report["note"] = f"no alert matching {source.alerts!r} fired between {_iso(grid[0])} and {_iso(grid[-1])}"
            log.warning("labels: %s", report["note"])
    incidents = read_table(source.incidents)[0] if source.incidents else None
    frame, labels_report = apply_labels(frame, firing, grid, incidents, report)
    return frame, schema, labels_report
