"""Fixtures of the workers' tests."""

import pytest

from tests.helpers import BUCKET, ROOT, roles_env
from tests.services import S3Server, start_s3_server, stop_process_group, wait_for_s3
from workers import roles
from workers.store import ensure_bucket


@pytest.fixture(scope="module")
def role_server(tmp_path_factory) -> S3Server:
    """An S3 server that knows only the root identity and one identity per role, as rendered."""
    root = tmp_path_factory.mktemp("roles")
    roles.render(root / "rendered", roles_env())
    proc, port = start_s3_server(
        root / "data", root / "s3.log", keys=ROOT, identities=root / "rendered/identities.json"
    )
    server = S3Server(f"http://127.0.0.1:{port}", *ROOT)
    try:
        wait_for_s3(server, proc, root / "s3.log")
        ensure_bucket(server.client(), BUCKET)
        yield server
    finally:
        stop_process_group(proc)
