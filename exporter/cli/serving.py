"""`serve` and `api`: ports bound before any banner, open ports refused off loopback."""

from __future__ import annotations

import argparse
import errno
import logging
import socket

from exporter.cli.output import console, error
from exporter.core.settings import Settings


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is reachable from this machine only."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def _open_ports_allowed(settings: Settings, *, ingest: bool) -> bool:
    """With no API token the API (budgets, the alert webhook that can resolve alerts) is open,
    and with no ingest token anyone who reaches ingest can add spend and trip budget alerts:
    refused on an address others can reach unless --allow-unauthenticated says it is meant. On
    loopback (apps send spans from this machine), an open API is said aloud."""
    log = logging.getLogger("exporter")
    open_ports = []
    if not settings.api_token:
        open_ports.append(("API token (NEXUS_API_TOKEN)", "the API", settings.api_port))
    if ingest and not settings.ingest_token:
        open_ports.append(("ingest token (NEXUS_INGEST_TOKEN)", "OTLP ingest", settings.otlp_port))
    if not open_ports:
        return True
    if _is_loopback(settings.host):
        if not settings.api_token:
            log.warning(
                "no API token (NEXUS_API_TOKEN): the API on %s:%d is open to every local process",
                settings.host,
                settings.api_port,
            )
        return True
    if settings.allow_unauthenticated:
        for token, port_name, port in open_ports:
            log.warning(
                "no %s and NEXUS_ALLOW_UNAUTHENTICATED=true: %s on %s:%d is open to anyone who"
                " reaches it",
                token,
                port_name,
                settings.host,
                port,
            )
        return True
    missing = " and no ".join(token for token, _, _ in open_ports)
    which = " and ".join(port_name for _, port_name, _ in open_ports)
    error(
        f"no {missing}, and {settings.host} is not a loopback address: {which}"
        " would be open to anyone who reaches it. Set the token (--api-token, --ingest-token),"
        " bind to 127.0.0.1, or set NEXUS_ALLOW_UNAUTHENTICATED=true (--allow-unauthenticated"
        " true) if that is what you mean."
    )
    return False


def _bind_ports(settings: Settings, ports: dict[str, str]) -> dict[str, socket.socket] | None:
    """Binds each server's port (`ports`: server name → setting) before anything starts, so a
    port in use is one line naming the setting to change, printed before any banner."""
    from exporter.service import bind_port

    if not _ports_distinct(settings, list(ports.values())):
        return None
    socks: dict[str, socket.socket] = {}
    for name, setting in ports.items():
        port = getattr(settings, setting)
        try:
            socks[name] = bind_port(settings.host, port)
        except OSError as exc:
            _close(socks)
            reason = exc.strerror or exc
            error(f"cannot listen on {settings.host}:{port} ({reason}): {_remedy(exc, setting)}")
            return None
    return socks


def _remedy(exc: OSError, setting: str) -> str:
    # An address that does not resolve, or is not this machine's: the host is wrong, not the port.
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return "give an address of this machine with --host or NEXUS_HOST"
    flag, variable = "--" + setting.replace("_", "-"), "NEXUS_" + setting.upper()
    return f"choose another port with {flag} or {variable}"


def _ports_distinct(settings: Settings, names: list[str]) -> bool:
    """Each server needs its own port (0, any free one, excepted)."""
    owner: dict[int, str] = {}
    for setting in names:
        port = getattr(settings, setting)
        flag = "--" + setting.replace("_", "-")
        if port and port in owner:
            error(f"{owner[port]} and {flag} are both {port}: give each server its own port")
            return False
        owner[port] = flag
    return True


def _close(socks: dict[str, socket.socket]) -> None:
    for sock in socks.values():
        sock.close()


def _with_bound_ports(
    settings: Settings, socks: dict[str, socket.socket], ports: dict[str, str]
) -> Settings:
    """The settings with each port as bound: port 0 asks the system for a free one, and the
    warnings, the banner and everything after them show the port that was given."""
    bound = {setting: socks[name].getsockname()[1] for name, setting in ports.items()}
    return settings.model_copy(update=bound)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.ingest.price_overrides import PriceOverridesError
    from exporter.ingest.pricing import PriceBook
    from exporter.service import open_database, serve

    try:  # read here, so a bad file is one clear error, not a failure in every decode worker
        PriceBook(settings.prices_file)
    except PriceOverridesError as exc:
        error(str(exc))
        return 2
    socks = _bind_ports(settings, {"ingest": "otlp_port", "api": "api_port"})
    if socks is None:
        return 2
    settings = _with_bound_ports(settings, socks, {"ingest": "otlp_port", "api": "api_port"})
    if not _open_ports_allowed(settings, ingest=True):
        _close(socks)
        return 2
    database = open_database(settings)
    where = (
        "embedded PostgreSQL in " + str(settings.data_dir) if database.embedded else "PostgreSQL"
    )
    base = f"http://{settings.host}:{settings.otlp_port}"
    console.print(f"[bold]nexus-otel[/] storing calls in {where}")
    console.print(f"  OTLP/HTTP ingest  {base}/v1/traces")
    console.print(f"  metrics           {base}/metrics")
    console.print(f"  health            {base}/health")
    console.print(f"  API               http://{settings.host}:{settings.api_port}/docs")
    try:
        serve(settings, database, socks)
    finally:
        database.close()
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """The API alone, for a deployment that runs ingest elsewhere."""
    from exporter.service import open_database, serve_api

    socks = _bind_ports(settings, {"api": "api_port"})
    if socks is None:
        return 2
    settings = _with_bound_ports(settings, socks, {"api": "api_port"})
    if not _open_ports_allowed(settings, ingest=False):
        _close(socks)
        return 2
    database = open_database(settings)
    console.print(f"[bold]nexus-otel API[/] http://{settings.host}:{settings.api_port}/docs")
    try:
        serve_api(settings, database, socks["api"])
    finally:
        database.close()
    return 0
