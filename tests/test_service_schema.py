"""A schemathesis run against the live server's OpenAPI spec: generated requests (valid and not) to every
operation get no 5xx, no undocumented status, and bodies that match the spec. (schemathesis' command line, run
on the server this test starts: its pytest plugin does not load under this pytest.)"""

import shutil
import subprocess
import sys
from pathlib import Path

from test_service import Server, free_port

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_generated_requests_get_no_server_error_and_match_the_spec(tiny_entries, tmp_path):
    from sensorium.service import Limits, ServeConfig

    root = tmp_path / "allowed"
    root.mkdir()
    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu", allow_paths=(str(root),),
                         db=str(tmp_path / "index"), limits=Limits(max_body_bytes=1 << 20, request_timeout=60))
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    with Server(config) as running:
        run = subprocess.run([st, "run", running.url + "/openapi.json", "--checks", CHECKS, "--max-examples", "20",
                              "--seed", "1", "--request-timeout", "60", "--generation-deterministic",
                              "--suppress-health-check", "all"],
                             capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
