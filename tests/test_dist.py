"""The package as a user gets it: the sdist, the wheel built from that sdist, and the wheel
installed in a fresh virtualenv, run from a directory outside the source tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PACKAGES = ("nexus_otel", "exporter")
# Source directory -> where the wheel carries it (the CLI reads them when installed).
BUNDLED = {
    "migrations": "exporter/_migrations",
    "prometheus/rules": "exporter/_prometheus_rules",
    "alertmanager/templates": "exporter/_alertmanager_templates",
}
# What the sdist holds: the packages, the bundled files, the README its metadata shows, and
# what the build backend always adds.
SDIST_TOP_LEVEL = {
    *PACKAGES,
    "migrations",
    "prometheus",
    "alertmanager",
    "README.md",
    "LICENSE",
    "pyproject.toml",
    "PKG-INFO",
    ".gitignore",
}
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "entry_points.txt", "licenses/LICENSE"}
# A cold pip cache downloads every dependency of the [demo] extra (under a minute here); generous,
# because a slow index must fail as a timeout with pip's output, not hang the suite.
BUILD_TIMEOUT_SECONDS = 300
INSTALL_TIMEOUT_SECONDS = 600
DEMO_SECONDS = 8  # long enough for a dozen calls, failures included (every eighth call fails)
DEMO_TIMEOUT_SECONDS = 180
FAILURE_EVERY = 8  # the demo's schedule, as the README states it: every eighth call fails
STEPS = {
    ("groq", "fact_generation", "llama-3.3-70b-versatile"),
    ("openai", "fact_dedup", "text-embedding-3-small"),
    ("gcp.gemini", "content_expansion", "gemini-2.5-flash"),
    ("anthropic", "caption", "claude-sonnet-4-5"),
    ("openai", "hashtags", "o4-mini"),
}
KINDS = ("calls", "failed", "input", "output", "cache_read", "cache_write", "reasoning")


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path


def _run(
    command: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`python -m build` as `make dist` runs it: the sdist, then the wheel built from the sdist
    (so a file the sdist forgets is missing from the wheel too)."""
    out = tmp_path_factory.mktemp("dist")
    result = _run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], BUILD_TIMEOUT_SECONDS
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Built(
        out / f"nexus_otel-{VERSION}.tar.gz", out / f"nexus_otel-{VERSION}-py3-none-any.whl"
    )


def _clean_env(venv: Path) -> dict[str, str]:
    """The user's shell with the venv first: nothing pointing at the source tree or another
    environment, and no setting that would change what the demo does."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DAILY_BUDGET_USD", "COLUMNS"}
        and not key.startswith(("NEXUS_", "TELEGRAM_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """Where the venv and the embedded PostgreSQL's data live. Not under pytest's temporary
    root: run as root, PostgreSQL runs as another user that must reach its binaries and data,
    and every pytest session that starts meanwhile makes that root private again (0700)."""
    with tempfile.TemporaryDirectory(prefix="nexus-dist-") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def venv(built: Built, scratch: Path) -> Path:
    """A fresh virtualenv (no system site packages) with the wheel and its [demo] extra; the
    dependencies come from the package index, through pip's cache. This environment's pip
    installs into it (`--python`): the older one `python -m venv` bundles takes much longer over
    the same set."""
    root = scratch / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(root)], 60)
    assert created.returncode == 0, created.stdout + created.stderr
    python = root / "bin" / "python"
    install = ["install", "--disable-pip-version-check", f"{built.wheel}[demo]"]
    installed = _run(
        [sys.executable, "-m", "pip", "--python", str(python), *install],
        INSTALL_TIMEOUT_SECONDS,
        env=_clean_env(root),
        cwd=root,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return root


def test_twine_check_strict_passes_on_the_sdist_and_the_wheel(built: Built) -> None:
    result = _run(
        [sys.executable, "-m", "twine", "check", "--strict", str(built.sdist), str(built.wheel)],
        120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_readme_installs_from_a_clone_or_a_wheel_not_by_name() -> None:
    """nexus-otel is on no package index: `pip install nexus-otel` fails for every reader."""
    readme = (ROOT / "README.md").read_text()
    assert not re.findall(r"pip install +['\"]?nexus-otel\b.*", readme)
    assert "pip install -e '.[server]'" in readme
    assert "pip install 'dist/nexus_otel-<version>-py3-none-any.whl[server]'" in readme


def _source_files(directory: Path) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_both_packages_the_bundled_files_and_nothing_else(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    packages = set().union(*(_source_files(ROOT / package) for package in PACKAGES))
    bundled = {
        f"{target}/{Path(source).name}"
        for directory, target in BUNDLED.items()
        for source in _source_files(ROOT / directory)
    }
    dist_info = {f"nexus_otel-{VERSION}.dist-info/{name}" for name in DIST_INFO}
    assert {"nexus_otel/py.typed", "exporter/py.typed", "exporter/cli/__init__.py"} <= packages
    assert {
        "exporter/_migrations/001_schema.sql",
        "exporter/_prometheus_rules/alerts.yml",
        "exporter/_alertmanager_templates/telegram.tmpl",
    } <= bundled
    assert names == packages | bundled | dist_info, sorted(names ^ (packages | bundled | dist_info))
    assert not [name for name in names if name.startswith(("tests/", "bench/", ".venv/"))]


def test_the_sdist_holds_what_the_wheel_is_built_from_and_no_tests(built: Built) -> None:
    prefix = f"nexus_otel-{VERSION}/"
    with tarfile.open(built.sdist) as sdist:
        files = {m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()}
    assert {name.split("/")[0] for name in files} == SDIST_TOP_LEVEL, sorted(files)
    assert {name.split("/")[1] for name in files if name.startswith("prometheus/")} == {"rules"}
    assert {name.split("/")[1] for name in files if name.startswith("alertmanager/")} == {
        "templates"
    }
    for directory in BUNDLED:
        assert _source_files(ROOT / directory) <= files, directory


def test_the_installed_packages_come_from_the_venv_not_the_clone(
    venv: Path, tmp_path: Path
) -> None:
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    script = (
        "import importlib.util, exporter, nexus_otel\n"
        "assert importlib.util.find_spec('pytest') is None, 'a package of the test environment'\n"
        "print(exporter.__file__)\nprint(nexus_otel.__file__)"
    )
    result = _run(
        [str(venv / "bin" / "python"), "-c", script], 60, env=_clean_env(venv), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert [Path(line) for line in result.stdout.split()] == [
        site_packages / "site-packages" / "exporter" / "__init__.py",
        site_packages / "site-packages" / "nexus_otel" / "__init__.py",
    ]


def test_version(venv: Path, tmp_path: Path) -> None:
    result = _run(["nexus-otel", "--version"], 60, env=_clean_env(venv), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"nexus-otel {VERSION}\n", "")


def test_rules_and_alertmanager_templates_come_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    """Outside the source tree, both commands read the copies the wheel carries, which are
    the repository's files unchanged (default threshold, example credentials)."""
    env = _clean_env(venv)
    rules = _run(["nexus-otel", "prometheus-rules", "--out", "rules"], 60, env=env, cwd=tmp_path)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    for name in ("alerts.yml", "recording.yml"):
        assert (tmp_path / "rules" / name).read_text() == (
            ROOT / "prometheus" / "rules" / name
        ).read_text()
    (tmp_path / "alertmanager").mkdir()
    config = _run(
        [
            "nexus-otel",
            "alertmanager-config",
            "--example",
            "--file-mode",
            "644",
            "--output",
            "alertmanager/alertmanager.yml",
        ],
        60,
        env=env,
        cwd=tmp_path,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    for name in ("alertmanager.yml", "templates/telegram.tmpl"):
        assert (tmp_path / "alertmanager" / name).read_text() == (
            ROOT / "alertmanager" / name
        ).read_text()


def _totals(output: str, label: str) -> dict[str, int]:
    match = re.search(rf"^summary: {label} (calls=.*?)(?: cost_usd=.*)?$", output, re.M)
    assert match, output
    values = dict(item.split("=") for item in match.group(1).split())
    return {kind: int(values[kind]) for kind in KINDS}


# Reads the demo's embedded database with the venv's own pgserver and psycopg, not with the
# project's code: what was stored, independently of what the demo printed.
STORED_ROWS = """
import json, sys, pgserver, psycopg
server = pgserver.get_server(sys.argv[1], cleanup_mode="stop")
with psycopg.connect(server.get_uri()) as conn:
    totals = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE NOT success), sum(input_tokens),"
        " sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),"
        " sum(reasoning_tokens) FROM api_calls WHERE service_name = 'carousel-bot'"
    ).fetchone()
    steps = conn.execute("SELECT DISTINCT provider, operation, model FROM api_calls").fetchall()
print(json.dumps({"totals": [int(v) for v in totals], "steps": steps}))
"""


def test_the_demo_runs_from_the_wheel_on_the_embedded_postgres(
    venv: Path, scratch: Path, tmp_path: Path
) -> None:
    data = scratch / "demo-data"
    env = {**_clean_env(venv), "NEXUS_DATA_DIR": str(data)}
    ports = ["--otlp-port", str(free_port()), "--api-port", str(free_port())]
    command = ["nexus-otel", "demo", "--duration", str(DEMO_SECONDS), *ports]
    demo = _run(command, DEMO_TIMEOUT_SECONDS, env=env, cwd=tmp_path)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output
    assert "every call stored exactly once, tokens match to the unit" in demo.stdout
    reported = _totals(demo.stdout, "providers reported")
    assert _totals(demo.stdout, "stored") == reported
    assert reported["calls"] >= 12, output  # 8 s of three workers
    assert reported["failed"] == reported["calls"] // FAILURE_EVERY, output

    stored = _run(
        [str(venv / "bin" / "python"), "-c", STORED_ROWS, str(data / "pgdata")],
        120,
        env=env,
        cwd=tmp_path,
    )
    assert stored.returncode == 0, stored.stdout + stored.stderr
    rows = json.loads(stored.stdout)
    assert dict(zip(KINDS, rows["totals"], strict=True)) == reported
    assert {tuple(step) for step in rows["steps"]} == STEPS


def test_migrations_come_from_the_wheel_whatever_else_site_packages_holds(
    venv: Path, scratch: Path, tmp_path: Path
) -> None:
    """A distribution that installs a top-level `migrations/` (some Django apps do) puts it in
    the same site-packages; the exporter must still apply its own."""
    site_packages = next((venv / "lib").glob("python3.*/site-packages"))
    foreign = site_packages / "migrations"
    foreign.mkdir()
    try:
        (foreign / "0001_initial.sql").write_text("SELECT 1;\n")
        env = {**_clean_env(venv), "NEXUS_DATA_DIR": str(scratch / "migrate-data")}
        result = _run(["nexus-otel", "migrate"], 120, env=env, cwd=tmp_path)
    finally:
        shutil.rmtree(foreign)
    ours = ", ".join(sorted(path.stem for path in (ROOT / "migrations").glob("*.sql")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"migrations applied: {ours}\n" in result.stderr, result.stderr
