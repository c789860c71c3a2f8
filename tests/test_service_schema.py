"""The OpenAPI schema, exercised by schemathesis against the app: no request may cause a server error
or a status code the schema does not document.

Derandomized (a fixed seed per operation, no example database), so a run is the same run every time;
a test checks that every operation in the schema is parametrized.
"""

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
# schemathesis calls the app as "testserver": the configured host, so a keyless server answers it.
APP = create_app(
    Settings(
        data_dir=Path(_DATA.name),
        host="testserver",
        require_keys=False,
        rate_limit_per_minute=0,
        max_active_jobs=0,
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance])


def test_every_operation_is_exercised():
    documented = {
        f"{method.upper()} {path}" for path, item in APP.openapi()["paths"].items() for method in item
    }
    parametrized = {f"{r.ok().method.upper()} {r.ok().path}" for r in schema.get_all_operations()}
    assert "GET /v1/capabilities" in documented and "POST /v1/jobs" in documented
    assert parametrized == documented


def test_malformed_multipart_is_a_documented_422():
    from fastapi.testclient import TestClient

    client = TestClient(APP, base_url="http://127.0.0.1")
    for path in ("/v1/jobs", "/v1/swap", "/v1/faces"):
        for content_type, body in (
            ("multipart/form-data; boundary=xyz", b"--xyz\r\n-8202--xyz--\r\n"),
            ("multipart/form-data", b"no boundary"),
        ):
            r = client.post(path, content=body, headers={"Content-Type": content_type})
            assert r.status_code == 422, (path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
