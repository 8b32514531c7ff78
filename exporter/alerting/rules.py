"""The Prometheus alert rules, rewritten for another single-call threshold or runbook location
(`nexus-otel prometheus-rules`), and, for tests and trials, with every duration scaled."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.utils import floatToGoString

from exporter.alerting.errors import AlertingConfigError
from exporter.core.files import bundled_dir
from exporter.ingest.metrics import COST_BUCKETS

DEFAULT_RUNBOOK_BASE_URL = "https://github.com/nexus-otel/nexus-otel/blob/main"
DEFAULT_SINGLE_CALL_USD = 0.5
# --time-scale: 1 is the rules as shipped; 0.01 makes a 10-minute window 6 seconds, so every
# alert can be seen firing end to end in a test. Above 1 only delays alerts; scaled durations
# are rounded to milliseconds, Prometheus' resolution.
MAX_TIME_SCALE = 1.0
UNITS_MS = {"y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000,
            "m": 60_000, "s": 1000, "ms": 1}  # fmt: skip
DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
# Every duration in a rule file: `for:`, a range or subquery `[10m]` / `[1h:5m]`, `offset 1d`.
SCALED = re.compile(
    rf"(?P<for>^\s*for:\s*)(?P<for_value>{DURATION})\s*$"
    rf"|(?P<range>\[)(?P<range_value>{DURATION})(?::(?P<step>{DURATION}))?\]"
    rf"|(?P<offset>\boffset\s+)(?P<offset_value>{DURATION})\b",
    re.MULTILINE,
)


def render_alert_rules(
    single_call_usd: float = DEFAULT_SINGLE_CALL_USD,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    time_scale: float = 1.0,
) -> str:
    """alerts.yml with another single-call threshold, runbook base URL and time scale."""
    if single_call_usd not in COST_BUCKETS:
        boundaries = ", ".join(floatToGoString(b) for b in COST_BUCKETS)
        raise AlertingConfigError(
            f"--single-call-usd {single_call_usd:g} is not a bucket boundary of "
            f"nexus_llm_call_cost_usd; choose one of {boundaries}"
        )
    text = (bundled_dir("prometheus/rules") / "alerts.yml").read_text()
    default_le = f'le="{floatToGoString(DEFAULT_SINGLE_CALL_USD)}"'
    text = text.replace(default_le, f'le="{floatToGoString(single_call_usd)}"')
    text = text.replace(f"${DEFAULT_SINGLE_CALL_USD:.2f}", f"${single_call_usd:.2f}")
    base = _runbook_base(runbook_base_url)
    text = text.replace(f"{DEFAULT_RUNBOOK_BASE_URL}/docs/RUNBOOK.md", f"{base}/docs/RUNBOOK.md")
    return scale_durations(text, time_scale)


# The characters a URL may hold (RFC 3986) but for a quote and a backslash: the base is written
# inside a double-quoted YAML string, where either would change the file's meaning.
_URL_TEXT = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def _runbook_base(url: str) -> str:
    """The runbook base URL without a trailing slash; AlertingConfigError for anything but an
    http(s) URL with a host (whitespace, quotes and control characters included)."""
    parsed = urlsplit(url) if _URL_TEXT.fullmatch(url) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AlertingConfigError(
            f"--runbook-base-url {url!r} is not an http(s) URL (such as"
            " https://github.com/me/nexus-otel/blob/main)"
        )
    return url.rstrip("/")


def scale_durations(text: str, factor: float) -> str:
    """`text` (a rule file) with every `for:`, range, subquery step and offset multiplied by
    `factor`, the same for all, so the rules keep their meaning on a faster clock."""
    if not 0 < factor <= MAX_TIME_SCALE:
        raise AlertingConfigError(
            f"--time-scale {factor:g} is not in (0, {MAX_TIME_SCALE:g}]: it shortens every "
            "duration of the rules (0.01 makes 10m 6s)"
        )
    if factor == 1:
        return text

    def scaled(duration: str) -> str:
        total = sum(int(n) * UNITS_MS[u] for n, u in re.findall(r"(\d+)(ms|[smhdwy])", duration))
        ms = round(total * factor)
        if total and ms == 0:
            raise AlertingConfigError(
                f"--time-scale {factor:g} makes {duration} shorter than a millisecond"
            )
        return format_duration(ms)

    def replace(match: re.Match[str]) -> str:
        if match["for"] is not None:
            return match["for"] + scaled(match["for_value"])
        if match["range"] is not None:
            step = f":{scaled(match['step'])}" if match["step"] else ""
            return f"[{scaled(match['range_value'])}{step}]"
        return match["offset"] + scaled(match["offset_value"])

    return SCALED.sub(replace, text)


def format_duration(ms: int) -> str:
    """A Prometheus duration: 864000 → 14m24s, 1200 → 1s200ms, 0 → 0s."""
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        count, ms = divmod(ms, UNITS_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def write_rules(
    directory: Path, single_call_usd: float, runbook_base_url: str, time_scale: float = 1.0
) -> list[Path]:
    """Writes alerts.yml (rendered) and recording.yml (as shipped, durations scaled alike)."""
    alerts_text = render_alert_rules(single_call_usd, runbook_base_url, time_scale)
    recording_text = scale_durations(
        (bundled_dir("prometheus/rules") / "recording.yml").read_text(), time_scale
    )
    directory.mkdir(parents=True, exist_ok=True)
    alerts = directory / "alerts.yml"
    alerts.write_text(alerts_text)
    recording = directory / "recording.yml"
    recording.write_text(recording_text)
    return [alerts, recording]
