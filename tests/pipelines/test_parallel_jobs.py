"""Two jobs of one events backfill run at once, as "Scaling a backfill out" shows them.

Each job is an extractor of its own (``inherit_from: tap-lago``): Meltano 4 writes an
extractor's state and catalog under ``.meltano/run/<extractor>/`` before each run, so two
runs of one extractor at once overwrite each other's files. Together the jobs read every
event once, and each keeps its own bookmark within its range.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from tap_lago.client import parse_datetime

from tests.lago_sandbox import Sandbox
from tests.pipelines.harness import ROOT, Meltano, lago_objects, meltano_bin

pytestmark = pytest.mark.usefixtures("meltano_installed")

JOBS = ("older", "newer")


def _bookmark(meltano: Meltano, job: str) -> dt.datetime:
    state = meltano.stored_state(f"dev:tap-lago--{job}-to-target-jsonl")
    return parse_datetime(state["bookmarks"]["events"]["replication_key_value"])


def test_two_jobs_at_once_read_every_event_once_each_with_its_own_bookmark(
    sandbox: Sandbox, workdir: Path
) -> None:
    events = lago_objects(sandbox, "events")
    stamps = sorted(parse_datetime(e["timestamp"]) for e in events)
    cut = stamps[len(stamps) // 2].replace(microsecond=0) + dt.timedelta(seconds=1)
    end = cut - dt.timedelta(milliseconds=1)
    ranges = {
        "older": {
            "START_DATE": (stamps[0] - dt.timedelta(days=1)).isoformat(),
            "END_DATE": end.isoformat(),
        },
        "newer": {"START_DATE": cut.isoformat()},
    }
    meltano = Meltano(
        workdir,
        source=sandbox,
        extra_env={"TAP_LAGO__SELECT": '["events.*"]', "TAP_LAGO_LOOKBACK_WINDOW_DAYS": "0"},
    )
    # The project's system database exists before the jobs start, as in any project that
    # has run once (two first runs at once would both set it up).
    subprocess.run(
        [meltano_bin(), "state", "list"],
        cwd=ROOT,
        env=meltano.env(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    procs = {}
    for job in JOBS:
        out = workdir / job
        out.mkdir()
        env = {**meltano.env(), "TARGET_JSONL_DESTINATION_PATH": str(out)}
        env.update({f"TAP_LAGO__{job.upper()}_{k}": v for k, v in ranges[job].items()})
        procs[job] = subprocess.Popen(
            [meltano_bin(), "run", f"tap-lago--{job}", "target-jsonl"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    logs = {job: proc.communicate(timeout=600)[0] for job, proc in procs.items()}
    for job, proc in procs.items():
        assert proc.returncode == 0, logs[job][-5000:]
        assert (ROOT / ".meltano" / "run" / f"tap-lago--{job}").is_dir()  # files of its own

    read = {
        job: [
            json.loads(line)["transaction_id"]
            for line in (workdir / job / "events.jsonl").read_text().splitlines()
        ]
        for job in JOBS
    }
    assert not set(read["older"]) & set(read["newer"])
    assert sorted(read["older"] + read["newer"]) == sorted(e["transaction_id"] for e in events)
    assert 0 < len(read["older"]) < len(events)
    assert _bookmark(meltano, "older") == end  # never past its end_date
    assert _bookmark(meltano, "newer") >= stamps[-1]
