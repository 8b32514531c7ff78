"""The committed dashboards are exactly what the code generates, parse as the foundation SDK's
models, and every panel has a title, a unit and a query on a provisioned datasource."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import units

from exporter.cli import main
from exporter.dashboards import DASHBOARDS, build_all, load, render, stale, write_all
from exporter.dashboards.sql import SQLQuery

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
UIDS = {
    "overview": "nexus-overview",
    "costs": "nexus-costs",
    "performance": "nexus-performance",
    "roi": "nexus-roi",
    "exporter-health": "nexus-exporter-health",
}
LLM_VARIABLES = ["service", "provider", "model", "operation"]
# Grafana's unit ids, as the foundation SDK lists them; `suffix:` is Grafana's custom unit.
UNITS = {v for k, v in vars(units).items() if not k.startswith("_") and isinstance(v, str)}


# Queries that do not take a dashboard variable, each with the reason; every other query of every
# panel references every variable of its dashboard. Keys: (dashboard file, "panel title/refId").
_BUDGETS = "a budget's scope is part of its definition; filtering would show another budget"
_ALERTS = "alerts concern the whole stack (an exporter down has no service or provider)"
_CONTENT = "an item's cost is all of its generation; a partial cost would rank items wrongly"
NOT_FILTERED = {
    ("overview", "Budgets/A"): _BUDGETS,
    ("overview", "Active alerts/A"): _ALERTS,
    ("overview", "Alert history/A"): _ALERTS,
    ("costs", "Budget burn (current period)/A"): _BUDGETS,
    ("costs", "Forecast at period end/A"): _BUDGETS,
    ("costs", "Budget usage/A"): _BUDGETS,
    ("costs", "Budgets/A"): _BUDGETS,
    ("roi", "Content ranked by engagement per dollar/A"): _CONTENT,
    ("roi", "Engagement per dollar by item/A"): _CONTENT,
    ("roi", "Cost per engagement by item/A"): _CONTENT,
    ("roi", "Spend vs engagement/B"): "engagement belongs to content, not to calls",
}


def _known_unit(unit: str) -> bool:
    return unit in UNITS or unit.startswith("suffix:")


def _committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    assert stale(DASHBOARD_DIR) == [], "run `make dashboards` and commit grafana/dashboards"
    assert sorted(_committed()) == sorted(DASHBOARDS)
    written = write_all(tmp_path)
    assert all(written.values())  # a fresh directory: every file is new
    for path in written:
        assert path.read_text() == (DASHBOARD_DIR / path.name).read_text()
    assert write_all(tmp_path) == dict.fromkeys(written, False)  # regenerating changes nothing


def test_the_generator_notices_an_edited_file(tmp_path: Path) -> None:
    write_all(tmp_path)
    path = tmp_path / "overview.json"
    path.write_text(path.read_text().replace('"5s"', '"1m"'))
    assert stale(tmp_path) == [path]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_dashboard_round_trips_through_the_sdk_models(name: str) -> None:
    text = (DASHBOARD_DIR / f"{name}.json").read_text()
    board = load(text)
    assert isinstance(board, dm.Dashboard)
    assert render(board) == text
    for panel in board.panels or []:
        assert isinstance(panel, dm.Panel)
        for target in panel.targets or []:
            # Decoded as a known query type, never as the SDK's catch-all.
            assert not isinstance(target, UnknownDataquery), panel.title
            assert isinstance(target, pm.Dataquery | SQLQuery), panel.title


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_panel_has_a_title_a_unit_and_a_query(name: str) -> None:
    board = _committed()[name]
    provisioned = {
        d["uid"]: d["type"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]
    }
    panels = _panels(board)
    assert len(panels) >= 6
    assert len({p["id"] for p in panels}) == len(panels)
    titles = [p["title"] for p in panels]
    assert len(set(titles)) == len(titles), "titles identify panels: keep them unique"
    for panel in panels:
        assert panel["title"].strip()
        assert _known_unit(panel["fieldConfig"]["defaults"].get("unit", "")), panel["title"]
        for override in panel["fieldConfig"]["overrides"]:
            for item in override["properties"]:
                assert item["id"] != "unit" or _known_unit(item["value"]), panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            query = target.get("expr") or target.get("rawSql")
            assert query and query.strip(), panel["title"]
            source = target["datasource"]
            assert provisioned.get(source["uid"]) == source["type"], panel["title"]


def test_a_rate_per_hour_says_so_on_its_axis() -> None:
    """A USD unit alone read a spend rate ($ per hour) as dollars."""
    hourly = [
        (name, panel)
        for name, board in _committed().items()
        for panel in _panels(board)
        if any("* 3600" in target.get("expr", "") for target in panel["targets"])
    ]
    assert [panel["title"] for _, panel in hourly] == ["Spend rate per provider"]
    for _, panel in hourly:
        assert panel["fieldConfig"]["defaults"]["custom"]["axisLabel"] == "per hour"


def test_dashboards_share_uids_tags_refresh_variables_and_links() -> None:
    boards = _committed()
    assert {name: b["uid"] for name, b in boards.items()} == UIDS
    for name, board in boards.items():
        assert "nexus-otel" in board["tags"]
        assert board["refresh"] == "5s"
        assert board["schemaVersion"] >= 39
        links = board["links"]
        assert links and links[0]["type"] == "dashboards" and links[0]["tags"] == ["nexus-otel"]
        names = [v["name"] for v in board.get("templating", {}).get("list", [])]
        if name == "exporter-health":
            assert names == ["instance"]
            continue
        assert names == LLM_VARIABLES
        for variable in board["templating"]["list"]:
            assert variable["multi"] and variable["includeAll"], variable["name"]
            assert variable["current"]["value"] == ["$__all"]


def test_provider_colours_follow_the_original_dashboard() -> None:
    overview = {p["title"]: p for p in _panels(_committed()["overview"])}
    overrides = overview["Token usage per provider (24 h)"]["fieldConfig"]["overrides"]
    colours = {
        o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"] for o in overrides
    }
    assert colours["groq"] == "#8b5cf6"  # purple
    assert colours["gcp.gemini"] == "#10b981"  # green
    assert colours["anthropic"] == "#3b82f6"  # blue


def test_builders_are_deterministic() -> None:
    first = {name: render(board) for name, board in build_all().items()}
    second = {name: render(board) for name, board in build_all().items()}
    assert first == second


def test_dashboards_command_writes_and_checks(tmp_path: Path) -> None:
    out = str(tmp_path / "dashboards")
    assert main(["dashboards", "--check", "--out", out]) == 2  # no directory yet
    assert main(["dashboards", "--out", out]) == 0
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(f"{n}.json" for n in UIDS)
    assert main(["dashboards", "--check", "--out", out]) == 0
    (Path(out) / "roi.json").write_text("{}")
    assert main(["dashboards", "--check", "--out", out]) == 1


def _references(query: str, variable: str) -> bool:
    """Whether Grafana substitutes `variable` into `query` (`$name`, `${name}`, `${name:fmt}`)."""
    return re.search(rf"\$(?:{variable}\b|\{{{variable}[}}:])", query) is not None


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_query_honours_every_dashboard_variable(name: str) -> None:
    """A filter the user sets applies to every panel, unless the panel is listed as exempt."""
    board = _committed()[name]
    variables = [v["name"] for v in board["templating"]["list"]]
    ignoring: dict[str, list[str]] = {}
    for panel in _panels(board):
        for target in panel["targets"]:
            key = f"{panel['title']}/{target['refId']}"
            query = target.get("expr") or target["rawSql"]
            missing = [v for v in variables if not _references(query, v)]
            if missing and (name, key) not in NOT_FILTERED:
                ignoring[key] = missing
            if (name, key) in NOT_FILTERED:
                assert missing, f"{key} takes every variable now: drop its exemption"
    assert ignoring == {}


def test_every_provisioned_datasource_is_queried_by_a_panel() -> None:
    provisioned = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    queried = {
        target["datasource"]["uid"]
        for board in _committed().values()
        for panel in _panels(board)
        for target in panel["targets"]
    } | {v["datasource"]["uid"] for b in _committed().values() for v in b["templating"]["list"]}
    assert provisioned == queried
