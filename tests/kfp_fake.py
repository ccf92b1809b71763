"""A recording fake of the KFP v2beta1 REST API (what Data Science Pipelines serves):
experiments, runs and recurring runs, with display-name filters and bearer-token checks,
and the API's refusals: a run parameter the pipeline spec does not declare, and a cron
schedule robfig/cron cannot parse (400, gRPC code 3 InvalidArgument, as the API server
answers). Tests read ``requests`` to see exactly what kfp.Client sent."""

from __future__ import annotations

import json
import re
import threading
import uuid
from urllib.parse import parse_qs, urlparse

from fake_http import JsonFakeServer


class FakeKFP(JsonFakeServer):
    def __init__(self, token: str = "dsp-token"):
        self.token = token
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        super().__init__()

    def calls(self, method: str, path_start: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_start)]

    def handle(self, method: str, url: str, headers, body):
        parsed = urlparse(url)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        path = parsed.path.rstrip("/")
        self.requests.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "body": body,
                "authorization": headers.get("Authorization"),
            }
        )
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "Unauthorized", "code": 16}
        with self._lock:
            if path == "/apis/v2beta1/healthz":
                return 200, {"multi_user": False}
            if path == "/apis/v2beta1/experiments":
                if method == "GET":
                    return 200, {"experiments": self._filter(self.experiments.values(), query)}
                experiment = {**body, "experiment_id": str(uuid.uuid4())}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            if method == "POST" and path in ("/apis/v2beta1/runs", "/apis/v2beta1/recurringruns"):
                refused = refusal(body)
                if refused:
                    return 400, {"error": refused, "message": refused, "code": 3}
            if path == "/apis/v2beta1/runs" and method == "POST":
                run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                self.runs[run["run_id"]] = run
                return 200, run
            if path == "/apis/v2beta1/recurringruns":
                if method == "GET":
                    items = [
                        r
                        for r in self.recurring.values()
                        if not query.get("experiment_id") or r.get("experiment_id") == query["experiment_id"]
                    ]
                    return 200, {"recurringRuns": self._filter(items, query), "total_size": len(items)}
                run = {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
                self.recurring[run["recurring_run_id"]] = run
                return 200, run
            if path.startswith("/apis/v2beta1/recurringruns/") and method == "DELETE":
                self.recurring.pop(path.rsplit("/", 1)[1], None)
                return 200, {}
        return 404, {"error": f"fake has no {method} {path}"}

    @staticmethod
    def _filter(items, query):
        items = list(items)
        if "filter" in query:
            for predicate in json.loads(query["filter"]).get("predicates", []):
                value = predicate.get("string_value", predicate.get("stringValue"))
                items = [i for i in items if i.get(predicate["key"]) == value]
        return items


# robfig/cron with seconds: per field (low, high); names for months and weekdays.
_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
_NAMES = {4: "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 5: "SUN MON TUE WED THU FRI SAT".split()}
_ATOM = re.compile(r"^(\*|\?|[A-Za-z0-9]+(-[A-Za-z0-9]+)?)(/[0-9]+)?$")


def _cron_ok(cron: str) -> bool:
    fields = cron.split()
    if len(fields) != 6:
        return False
    for index, field in enumerate(fields):
        low, high = _RANGES[index]
        for atom in field.split(","):
            match = _ATOM.match(atom)
            if not match:
                return False
            for token in re.split(r"[-/]", atom.split("/")[0]):
                if token in ("*", "?"):
                    continue
                names = _NAMES.get(index, [])
                number = (
                    names.index(token.upper()) + low
                    if token.upper() in names
                    else (int(token) if token.isdigit() else None)
                )
                if number is None or not low <= number <= high:
                    return False
    return True


def refusal(body: dict) -> str | None:
    """What the KFP API server refuses when a run or recurring run is created."""
    cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
    if cron is not None and not _cron_ok(cron):
        return (
            "Invalid input error: Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). "
            f"Error: failed to parse {cron!r}"
        )
    spec = body.get("pipeline_spec") or {}
    spec = spec.get("pipeline_spec", spec)  # with a platform spec, kfp.Client nests the two
    declared = set(((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters", {}) or {})
    given = set((body.get("runtime_config") or {}).get("parameters") or {})
    unknown = sorted(given - declared)
    if spec and unknown:
        return f"Invalid input error: unrecognized input parameter(s) {unknown} for the pipeline"
    return None
