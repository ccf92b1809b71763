"""Keep credentials out of messages: user:password in URLs, bearer tokens, JWTs and
OpenShift tokens that an endpoint or an echoing proxy may put into error text."""

from __future__ import annotations

import re

_PATTERNS = (
    (re.compile(r"(?<=://)[^/@\s\"']+@"), "[redacted]@"),  # scheme://user:pass@host
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"',}\s]+(\s+[^\"',}\s]+)?"), r"\1[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"\bsha256~[A-Za-z0-9_-]{20,}"), "[redacted-token]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
