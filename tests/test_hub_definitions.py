"""The Meltano Hub definitions: generated from `--about`, consistent, and usable by Meltano.

The last tests add both plugins with `meltano add --from-ref` to a fresh Meltano project in
a temporary folder, which installs them, and run them against the sandbox. So that the
install needs no access to GitHub, the test rewrites each definition's `pip_url` to the
local path of the package's folder (a plain, non-editable install of the working tree);
every other field is used as committed. A separate check proves the committed `pip_url`'s
`#subdirectory=` names that folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.hub_definitions import PLUGINS, REPOSITORY, about, definition, render, setting_kind
from tests.lago_sandbox import Sandbox
from tests.pipelines.harness import meltano_bin
from tests.readme_tables import ROOT
from tests.target.helpers import events_messages, usage_rows

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAMES = [spec.name for spec in PLUGINS]
#: Files that link to the project: every GitHub link in them names REPOSITORY.
LINKING = (
    "README.md", "tap-lago/README.md", "target-lago/README.md", "tap-lago/pyproject.toml",
    "target-lago/pyproject.toml", "tap-lago/meltano-hub.yml", "target-lago/meltano-hub.yml",
)  # fmt: skip
GITHUB_LINK = re.compile(r"https://(?:raw\.githubusercontent|github)\.com/([\w.-]+/[\w.-]+)")


def _committed(name: str) -> dict[str, Any]:
    [spec] = [p for p in PLUGINS if p.name == name]
    return dict(yaml.safe_load(spec.definition_path.read_text()))


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_definition_is_the_generated_one(name: str) -> None:
    [spec] = [p for p in PLUGINS if p.name == name]
    assert spec.definition_path.read_text() == render(name), (
        f"{spec.definition_path.relative_to(ROOT)} drifted from `{name} --about`: "
        "run `python -m tests.hub_definitions`"
    )


@pytest.mark.parametrize("name", NAMES)
def test_about_the_definition_and_meltano_yml_agree(name: str) -> None:
    info, committed = about(name), _committed(name)
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    [entry] = [p for kind in project["plugins"].values() for p in kind if p["name"] == name]
    assert committed["capabilities"] == info["capabilities"] == entry["capabilities"]
    properties = info["settings"]["properties"]
    for settings in (committed["settings"], entry["settings"]):
        assert [s["name"] for s in settings] == list(properties)
        for setting in settings:
            schema = properties[setting["name"]]
            assert setting["kind"] == setting_kind(setting["name"], schema)[0]
            assert bool(setting.get("sensitive")) is bool(schema.get("secret"))
            assert setting["label"] == schema["title"]


@pytest.mark.parametrize("name", NAMES)
def test_numbers_are_whole_and_the_definition_has_what_the_hub_lists(name: str) -> None:
    properties = about(name)["settings"]["properties"]
    assert not [s for s, schema in properties.items() if "number" in schema.get("type", [])]
    committed = _committed(name)
    for field in (
        "name", "variant", "namespace", "label", "description", "logo_url", "docs", "repo",
        "pip_url", "executable", "capabilities", "keywords", "maintenance_status", "settings",
    ):  # fmt: skip
        assert committed.get(field), f"{name}: no {field}"
    assert committed["maintenance_status"] in {"active", "beta", "development"}
    for setting in committed["settings"]:
        assert {"name", "label", "kind", "description", "sensitive"} <= set(setting)
        assert setting["kind"] not in {"password", "hidden", "decimal"}


@pytest.mark.parametrize("name", NAMES)
def test_pip_url_installs_the_package_from_its_folder(name: str) -> None:
    committed = _committed(name)
    url, subdirectory = committed["pip_url"].split("#subdirectory=")
    assert url == f"git+{REPOSITORY}.git"
    project = tomllib.loads((ROOT / subdirectory / "pyproject.toml").read_text())["project"]
    assert project["name"] == name
    assert committed["executable"] in project["scripts"]
    assert set(project["urls"]) == {"Homepage", "Documentation", "Repository", "Issues"}
    assert committed["docs"] == project["urls"]["Documentation"]
    assert committed["repo"] == project["urls"]["Repository"] == REPOSITORY


def test_every_link_to_the_project_names_one_repository() -> None:
    owner_repo = REPOSITORY.removeprefix("https://github.com/")
    for path in LINKING:
        found = GITHUB_LINK.findall((ROOT / path).read_text())
        assert found, f"{path} does not link to the repository"
        assert {link.removesuffix(".git") for link in found} == {owner_repo}, path


@pytest.mark.parametrize(
    ("path", "name", "anchor"),
    [
        ("README.md", "tap-lago", "## tap-lago\n\nCapabilities:"),
        ("README.md", "target-lago", "## target-lago\n\nCapabilities:"),
        ("tap-lago/README.md", "tap-lago", "## Capabilities\n\n"),
        ("target-lago/README.md", "target-lago", "## Capabilities\n\n"),
    ],
)
def test_readmes_list_the_capabilities_of_about(path: str, name: str, anchor: str) -> None:
    text = (ROOT / path).read_text()
    assert anchor in text, f"{path}: no {anchor!r}"
    sentence = re.split(r"\.\s", text.split(anchor, 1)[1], maxsplit=1)[0]
    listed = set(re.findall(r"`([a-z][a-z-]+)`", sentence))
    assert listed == set(about(name)["capabilities"]), path


# What is advertised is honoured; what is not honoured is not advertised.


def _plugin(name: str, config: dict[str, Any], folder: Path, stdin: str = "") -> Any:
    exe = Path(sys.executable).parent / name
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [str(exe), "--config", str(path)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=path.parent,
    )


def _subscriptions_and_metric(lago: Sandbox) -> tuple[list[str], str]:
    objects = lago.dump()
    subs = sorted(s["external_id"] for s in objects["subscriptions"] if s["status"] == "active")
    return subs, sorted(m["code"] for m in objects["billable_metrics"])[0]


@pytest.fixture(scope="module")
def destination(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    """A small organisation for target-lago to write to (no events yet)."""
    return sandbox_factory(seed={"seed": 9, "customers": 2, "events": 0})


def test_the_tap_refuses_batch_config(tmp_path: Path) -> None:
    batch = {"encoding": {"format": "jsonl"}, "storage": {"root": "file:///tmp"}}
    proc = _plugin("tap-lago", {"api_key": "unused", "batch_config": batch}, tmp_path)
    assert proc.returncode == 1
    assert "batch_config is not supported" in proc.stderr


def test_the_target_warns_of_sdk_settings_it_ignores(tmp_path: Path) -> None:
    config = {"api_key": "unused", "add_record_metadata": True, "load_method": "upsert"}
    proc = _plugin("target-lago", {**config, "batch_size_rows": 5}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("add_record_metadata", "load_method", "batch_size_rows"):
        assert f"{name} is ignored" in proc.stderr


def test_validate_records_decides_whether_the_schema_is_enforced(
    destination: Sandbox, tmp_path: Path
) -> None:
    subscriptions, metric = _subscriptions_and_metric(destination)
    settings = {
        "api_key": destination.api_key,
        "api_url": destination.url,
        "allow_rejections": True,
    }
    counts = {}
    for validate in (True, False):
        # `units` is declared a number; the text "7" is still a valid event property.
        [row] = usage_rows(1, subscriptions, metric, start=100 + validate)
        lines = events_messages([{**row, "units": "7"}])
        proc = _plugin(
            "target-lago",
            {**settings, "validate_records": validate},
            tmp_path,
            "".join(json.dumps(line) + "\n" for line in lines),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = re.search(
            r"summary stream=events .*?delivered=(\d+) .*?rejected=(\d+)", proc.stderr
        )
        assert found, proc.stderr[-3000:]
        counts[validate] = (int(found.group(1)), int(found.group(2)))
    assert counts == {True: (0, 1), False: (1, 0)}


# A fresh Meltano project, with both plugins added from their definitions.


@dataclass
class Project:
    """A Meltano project in a temporary folder."""

    root: Path
    env: dict[str, str]

    def meltano(self, *args: str, stdin: str = "", timeout: int = 600) -> Any:
        """Run a meltano command in the project; fail with its output when it fails."""
        proc = subprocess.run(
            [meltano_bin(), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
            env=self.env,
        )
        assert proc.returncode == 0, f"meltano {' '.join(args)}:\n{proc.stderr[-6000:]}"
        return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A new Meltano project, both plugins added (and installed) by `meltano add --from-ref`."""
    if not os.path.exists(meltano_bin()):
        pytest.fail("Meltano is not installed: .ci/setup installs it")
    root = tmp_path_factory.mktemp("meltano-project")
    (root / "meltano.yml").write_text(
        "default_environment: dev\nproject_id: hub-definitions-test\n"
        "send_anonymous_usage_stats: false\nvenv:\n  backend: uv\nenvironments:\n  - name: dev\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MELTANO_", "TAP_LAGO_", "TARGET_LAGO_", "VIRTUAL_ENV"))
    }
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    made = Project(root, env)
    for name in NAMES:
        local = {**_committed(name), "pip_url": str(ROOT / name)}
        ref = root / f"{name}.definition.yml"
        ref.write_text(yaml.safe_dump(local, sort_keys=False))
        made.meltano("add", "--from-ref", str(ref), name)
    yield made


@pytest.mark.parametrize("name", NAMES)
def test_meltano_add_keeps_the_definition(project: Project, name: str) -> None:
    [spec] = [p for p in PLUGINS if p.name == name]
    added = yaml.safe_load((project.root / "meltano.yml").read_text())["plugins"]
    [entry] = [p for p in added[spec.plugin_type] if p["name"] == name]
    expected = definition(name)
    assert entry["variant"] == expected["variant"]
    assert entry["capabilities"] == expected["capabilities"]
    assert entry["settings"] == expected["settings"]
    assert (project.root / ".meltano" / spec.plugin_type / name / "venv" / "bin" / name).exists()


def test_meltano_invoke_runs_the_tap(project: Project, sandbox: Sandbox) -> None:
    env = {
        "TAP_LAGO__SELECT": '["billable_metrics.*"]',  # as `meltano select` would store it
        "TAP_LAGO_API_KEY": sandbox.api_key,
        "TAP_LAGO_API_URL": sandbox.url,
        "TAP_LAGO_PAGE_SIZE": "2",  # integer settings from the environment, as Meltano casts them
        "TAP_LAGO_REQUEST_TIMEOUT": "30",
    }
    proc = Project(project.root, {**project.env, **env}).meltano("invoke", "tap-lago")
    messages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    records = [m for m in messages if m["type"] == "RECORD"]
    assert {m["stream"] for m in records} == {"billable_metrics"}
    assert sorted(m["record"]["lago_id"] for m in records) == sorted(
        o["lago_id"] for o in sandbox.dump()["billable_metrics"]
    )


def test_meltano_invoke_runs_the_target(project: Project, destination: Sandbox) -> None:
    lago, before = destination, destination.dump()
    rows = usage_rows(4, *_subscriptions_and_metric(lago))
    lines = [*events_messages(rows), {"type": "STATE", "value": {"n": 4}}]
    env = {
        "TARGET_LAGO_API_KEY": lago.api_key,
        "TARGET_LAGO_API_URL": lago.url,
        "TARGET_LAGO_BATCH_SIZE": "3",
    }
    proc = Project(project.root, {**project.env, **env}).meltano(
        "invoke", "target-lago", stdin="".join(json.dumps(line) + "\n" for line in lines)
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"n": 4}
    assert len(lago.dump()["events"]) == len(before["events"]) + 4
    assert "summary stream=events action=events received=4 delivered=4" in proc.stderr
