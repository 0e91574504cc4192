"""A bounded schemathesis run against /openapi.json on loopback (fake generate): no 500s,
answers that fit the document, whatever well- or ill-formed bodies the schema allows."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.api.harness import Api

pytestmark = pytest.mark.timeout(180)
EXAMPLES = 15  # per operation: seconds in all on the fake generate


async def test_schema_fuzz_finds_no_server_errors(api: Api, tmp_path: Path) -> None:
    await api.start(max_queued_per_user=100)
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        found = shutil.which("schemathesis")
        assert found is not None, "schemathesis is a dev dependency"
        cli = Path(found)
    proc = await asyncio.create_subprocess_exec(
        str(cli),
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "22",
        "--generation-deterministic",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 150)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
