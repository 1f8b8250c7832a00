"""`entitlements`: one plan's feature privileges, patched when they differ, else left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.lago_sandbox import Sandbox
from tests.target.helpers import dead_letters, record, run_cli, schema

PROPS = {"plan_code": {"type": "string"}, "code": {"type": "string"}}


def messages(*rows: dict[str, Any]) -> list[dict]:
    return [
        schema("entitlements", PROPS, ["plan_code", "code"]),
        *(record("entitlements", r) for r in rows),
    ]


def summary(stderr: str) -> str:
    return next(x for x in stderr.splitlines() if "summary stream=entitlements " in x)


def test_a_changed_privilege_is_patched_once_and_the_plans_other_features_stay(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    held = lago.dump()["entitlements"]
    row = next(e for e in held if any(p["value_type"] == "integer" for p in e["privileges"]))
    privilege = next(p for p in row["privileges"] if p["value_type"] == "integer")
    others = [e for e in held if e["plan_code"] == row["plan_code"] and e["code"] != row["code"]]
    # tap-lago's shape, one value changed; and a warehouse row's {code: value} shape.
    changed = {**row, "privileges": [{**privilege, "value": privilege["value"] + 7}]}
    same = {"plan_code": row["plan_code"], "code": row["code"],
            "privileges": {privilege["code"]: privilege["value"] + 7}}  # fmt: skip

    first = run_cli(tmp_path, config, messages(changed))
    assert first.returncode == 0, first.stderr[-2000:]
    assert " delivered=1 " in summary(first.stderr)
    now = lago.dump()["entitlements"]
    [mine] = [e for e in now if (e["plan_code"], e["code"]) == (row["plan_code"], row["code"])]
    assert {p["code"]: p["value"] for p in mine["privileges"]}[privilege["code"]] == (
        privilege["value"] + 7
    )
    assert [e for e in now if e["plan_code"] == row["plan_code"] and e["code"] != row["code"]] == (
        others
    )

    lago.requests(clear=True)
    again = run_cli(tmp_path, config, messages(changed, same))
    assert again.returncode == 0, again.stderr[-2000:]
    assert " delivered=0 already_present=2 " in summary(again.stderr)
    assert not [r for r in lago.requests() if r["method"] == "PATCH"]
    assert dead_letters(config["dead_letter_path"]) == []


def test_an_unknown_feature_is_a_dead_letter_with_lagos_reason(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    plan = lago.dump()["plans"][0]["code"]
    run = run_cli(tmp_path, config, messages({"plan_code": plan, "code": "nope", "privileges": {}}))
    assert run.returncode == 1
    [letter] = dead_letters(config["dead_letter_path"])
    assert letter["error_code"] == "feature_not_found"
