"""The Singer SDK's standard tap tests, against the session sandbox over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from singer_sdk.testing import get_tap_test_class
from singer_sdk.testing.runners import TapTestRunner
from tap_lago.tap import TapLago

from tests.conftest import SESSION_SEED
from tests.tap.conftest import tap_config

# Discovery at import time only needs a syntactically valid config; the runner below
# points the suite at the live sandbox.
_PLACEHOLDER = {"api_key": "placeholder", "api_url": "http://127.0.0.1:9/api/v1"}

_StandardTests: Any = get_tap_test_class(TapLago, config=_PLACEHOLDER)


class TestTapLagoStandard(_StandardTests):
    """SDK standard tests (discovery, CLI, every stream returns records matching its schema)."""

    @pytest.fixture(scope="class")
    def runner(self, sandbox_factory: Any) -> TapTestRunner:
        # Licensed, so that the premium streams return records too.
        sandbox = sandbox_factory(seed=dict(SESSION_SEED))
        sandbox.configure(premium=True)
        test_runner = TapTestRunner(
            tap_class=TapLago,
            config=tap_config(sandbox, page_size=50),
            parse_env_config=False,
        )
        test_runner.sync_all()
        return test_runner
