"""Both packages build, install into clean environments and run from there.

`uv build <folder>` makes the sdist, then the wheel from that sdist, so a file the sdist
lacks is missing from the wheel too. Each wheel goes into a fresh virtual environment of
its own (its declared dependencies only), where the console script prints `--about` and
runs a short sync against the sandbox, with the SDK's structured (JSON) logging on.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hub_definitions import REPOSITORY, about
from tests.lago_sandbox import Sandbox
from tests.readme_tables import ROOT
from tests.target.helpers import events_messages, usage_rows

UV = Path(sys.executable).parent / "uv"
NAMES = ("tap-lago", "target-lago")
#: Logging config of the SDK's `structured-logging` capability, as Meltano writes it.
STRUCTURED_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "singer_sdk.logging.StructuredFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
}


def _uv(*args: str | Path) -> None:
    proc = subprocess.run(
        [str(UV), *map(str, args)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per package: its built ``sdist`` and ``wheel``."""
    if not UV.exists():
        pytest.fail("uv is not installed next to Python: .ci/setup installs it")
    out: dict[str, dict[str, Path]] = {}
    for name in NAMES:
        folder = tmp_path_factory.mktemp(f"dist-{name}")
        _uv("build", "--quiet", "--out-dir", folder, ROOT / name)
        [sdist] = folder.glob("*.tar.gz")
        [wheel] = folder.glob("*.whl")
        out[name] = {"sdist": sdist, "wheel": wheel}
    return out


@pytest.fixture(scope="module")
def installed(
    dist: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Per package: the console script of its wheel, installed in a virtual env of its own."""
    scripts = {}
    for name in NAMES:
        venv = tmp_path_factory.mktemp(f"venv-{name}") / "venv"
        _uv("venv", "--quiet", "--python", sys.executable, venv)
        _uv("pip", "install", "--quiet", "--python", venv / "bin" / "python", dist[name]["wheel"])
        scripts[name] = venv / "bin" / name
    return scripts


def _run(script: Path, *args: str, stdin: str = "", log_config: Path | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAP_LAGO", "TARGET_LAGO"))}
    if log_config is not None:
        env["SINGER_SDK_LOG_CONFIG"] = str(log_config)
    return subprocess.run(
        [str(script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=script.parent,
    )


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", NAMES)
def test_sdist_and_wheel_hold_the_package(name: str, dist: dict[str, dict[str, Path]]) -> None:
    module = name.replace("-", "_")
    source = sorted(
        p.relative_to(ROOT / name).as_posix()
        for p in (ROOT / name / module).rglob("*")
        if p.suffix in {".py", ".json"}
    )
    with tarfile.open(dist[name]["sdist"]) as sdist:
        root = f"{module}-0.1.0/"
        in_sdist = {m.name.removeprefix(root) for m in sdist.getmembers()}
    assert {"README.md", "LICENSE", "pyproject.toml", "meltano-hub.yml"} <= in_sdist
    assert set(source) <= in_sdist
    with zipfile.ZipFile(dist[name]["wheel"]) as wheel:
        in_wheel = set(wheel.namelist())
        metadata = email.message_from_bytes(wheel.read(f"{module}-0.1.0.dist-info/METADATA"))
    assert set(source) <= in_wheel
    if name == "tap-lago":
        schemas = {p for p in source if p.startswith("tap_lago/schemas/") and p.endswith(".json")}
        assert schemas and schemas <= in_wheel  # one JSON schema per stream
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Author"] and metadata["Keywords"]
    assert any(c.startswith("Development Status") for c in metadata.get_all("Classifier", []))
    urls = dict(str(u).split(", ", 1) for u in metadata.get_all("Project-URL", []))
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues"}
    assert all(url.startswith(REPOSITORY) for url in urls.values())
    assert str(metadata.get_payload()).startswith(
        f"# {name}\n"
    )  # the README, as the long description


@pytest.mark.parametrize("name", NAMES)
def test_the_installed_plugin_describes_itself(name: str, installed: dict[str, Path]) -> None:
    proc = _run(installed[name], "--about", "--format=json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == about(name)


def test_the_installed_tap_syncs_two_streams(
    installed: dict[str, Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    config = tmp_path / "tap.json"
    config.write_text(json.dumps({"api_key": sandbox.api_key, "api_url": sandbox.url}))
    discovered = _run(installed["tap-lago"], "--config", str(config), "--discover")
    assert discovered.returncode == 0, discovered.stderr
    catalog = json.loads(discovered.stdout)
    wanted = {"billable_metrics", "taxes"}
    for stream in catalog["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = stream["tap_stream_id"] in wanted
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    (tmp_path / "logging.json").write_text(json.dumps(STRUCTURED_LOGGING))
    proc = _run(
        installed["tap-lago"],
        "--config", str(config),
        "--catalog", str(tmp_path / "catalog.json"),
        log_config=tmp_path / "logging.json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records: dict[str, set[str]] = {}
    for message in _json_lines(proc.stdout):
        if message["type"] == "RECORD":
            records.setdefault(message["stream"], set()).add(message["record"]["lago_id"])
    dump = sandbox.dump()
    assert records == {stream: {o["lago_id"] for o in dump[stream]} for stream in wanted}
    logs = _json_lines(proc.stderr)  # every line is a JSON object: structured logging
    assert logs and all({"level", "message"} <= set(line) for line in logs)


def test_the_installed_target_writes_events(
    installed: dict[str, Path], sandbox_factory: Callable[..., Sandbox], tmp_path: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 5, "customers": 3, "events": 0})
    before = lago.dump()
    subscriptions = sorted(
        s["external_id"] for s in before["subscriptions"] if s["status"] == "active"
    )
    metric = sorted(m["code"] for m in before["billable_metrics"])[0]
    rows = usage_rows(5, subscriptions, metric)
    lines = [*events_messages(rows), {"type": "STATE", "value": {"usage": 5}}]
    config = tmp_path / "target.json"
    config.write_text(
        json.dumps(
            {
                "api_key": lago.api_key,
                "api_url": lago.url,
                "dead_letter_path": str(tmp_path / "dead_letters.jsonl"),
            }
        )
    )
    (tmp_path / "logging.json").write_text(json.dumps(STRUCTURED_LOGGING))
    proc = _run(
        installed["target-lago"],
        "--config", str(config),
        stdin="".join(json.dumps(line) + "\n" for line in lines),
        log_config=tmp_path / "logging.json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _json_lines(proc.stdout) == [{"usage": 5}]
    assert len(lago.dump()["events"]) == len(before["events"]) + 5
    logs = _json_lines(proc.stderr)
    assert any(line["message"].startswith("summary stream=events") for line in logs)
