"""A stager whose receipt the object store refuses on the first run and takes on the next: the
fault (a store error on the receipt put alone, after staging succeeded) is not one a test can
cause on the real server without also breaking the copies, so this stands in for the worker's
report of it. The real stager's report of a refused receipt is tested in tests/workers/test_receipts.py.
Counts its runs per submission id in the temporary directory (the launcher passes workers no
variable a test could set for this)."""

import tempfile
from pathlib import Path

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    sid = pipes.extras["submission_id"]
    runs = Path(tempfile.gettempdir()) / f"fake-stager-{sid}"
    done = runs.read_text().count("\n") if runs.exists() else 0
    with runs.open("a") as out:
        out.write("run\n")
    receipt = ("failed", "ServiceUnavailable") if done == 0 else ("written", "")
    pipes.report_custom_message(
        {
            "worker": "stager",
            "submission_id": sid,
            "status": "staged",
            "receipt_id": sid,
            "receipt": receipt[0],
            "receipt_error": receipt[1],
        }
    )
