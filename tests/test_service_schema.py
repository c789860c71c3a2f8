"""The OpenAPI schema, exercised by schemathesis against the app: no request may cause a server error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from facefuse.service.app import Settings, create_app

# Not started (no workers): a job that gets through is only queued. The synchronous endpoints load
# their Pipeline on first use. The folder goes when the test process exits.
_DATA = tempfile.TemporaryDirectory(prefix="facefuse-schema-")
APP = create_app(Settings(data_dir=Path(_DATA.name), rate_limit_per_minute=0, max_active_jobs=0))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance])
