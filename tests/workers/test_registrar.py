import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from tests.helpers import drop_files
from workers import classifier, registrar
from workers.inbox import file_id
from workers.manifest import Manifest
from workers.runtime import WorkerError
from workers.store import make_s3_client

KEY = "inbox/acme/unknown/drop-001/"
CLAIMS = b"member_id,amount\n1,10\n"


def run_registrar(settings, grouping_key: str = KEY, method: str = "MARKER_FILE") -> dict:
    files = classifier.work(settings, {"grouping_key": grouping_key})["files"]
    return registrar.work(settings, {"grouping_key": grouping_key, "grouping_method": method, "files": files})


def counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        result = {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
            for t in ("submission", "submission_file", "inbox_object")
        }
    engine.dispose()
    return result


def read(settings, key: str) -> bytes:
    return make_s3_client(settings).get_object(Bucket=settings.bucket, Key=key)["Body"].read()


def test_a_group_becomes_one_submission_with_rows_and_a_manifest(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS, "extra/notes.txt": b"n"})

    result = run_registrar(synced_layouts)

    assert result["created"] is True
    assert counts(synced_layouts.metadata_db_url) == {"submission": 1, "submission_file": 2, "inbox_object": 3}
    manifest = Manifest.from_bytes(read(synced_layouts, result["manifest_key"]))
    assert manifest.submission_id == result["submission_id"]
    assert (manifest.submitter_id, manifest.grouping_key, manifest.grouping_method) == ("acme", KEY, "MARKER_FILE")
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256(read(synced_layouts, entry.inbox_key)).hexdigest()
        assert entry.raw_key == result["raw_prefix"] + entry.inbox_key.removeprefix(KEY)
    assert result["manifest_key"] == f"raw/acme/unknown/{result['submission_id']}/_manifest.generated.json"


def test_under_unknown_a_submission_takes_the_one_type_its_files_classify_as(synced_layouts, s3_server):
    drop_files(
        s3_server.client(),
        synced_layouts.bucket,
        KEY,
        {"medical_claims.csv": CLAIMS, "medical_claims_2.csv": CLAIMS + b"2"},
    )
    result = run_registrar(synced_layouts)
    assert result["file_type"] == "medical_claims"
    assert result["raw_prefix"] == f"raw/acme/medical_claims/{result['submission_id']}/"


def test_a_declared_file_type_in_the_path_wins(synced_layouts, s3_server):
    key = "inbox/acme/eligibility/drop-9/"
    drop_files(s3_server.client(), synced_layouts.bucket, key, {"medical_claims.csv": CLAIMS})
    assert run_registrar(synced_layouts, key)["file_type"] == "eligibility"


def test_registering_the_same_content_twice_returns_the_same_submission_and_adds_no_rows(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    first = run_registrar(synced_layouts)
    before = counts(synced_layouts.metadata_db_url)

    second = run_registrar(synced_layouts)

    assert second["submission_id"] == first["submission_id"] and second["created"] is False
    assert counts(synced_layouts.metadata_db_url) == before


def test_a_late_file_becomes_a_new_submission_linked_to_the_earlier_one(synced_layouts, s3_server):
    s3 = s3_server.client()
    drop_files(s3, synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    first = run_registrar(synced_layouts)
    drop_files(s3, synced_layouts.bucket, KEY, {"medical_claims_late.csv": b"late\n"})

    late = run_registrar(synced_layouts)

    assert late["created"] and late["submission_id"] != first["submission_id"]
    assert late["previous_submission_id"] == first["submission_id"]
    assert [row["file_id"] for row in late["file_table"]] == [file_id(KEY + "medical_claims_late.csv")]
    assert (
        Manifest.from_bytes(read(synced_layouts, first["manifest_key"])).files[0].inbox_key
        == KEY + "medical_claims.csv"
    )


def test_a_file_rewritten_after_registration_is_registered_again_as_new_content(synced_layouts, s3_server):
    s3 = s3_server.client()
    drop_files(s3, synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    first = run_registrar(synced_layouts)
    drop_files(s3, synced_layouts.bucket, KEY, {"medical_claims.csv": b"different bytes\n"})

    second = run_registrar(synced_layouts)

    assert second["submission_id"] != first["submission_id"]
    assert second["manifest_key"] != first["manifest_key"]


def test_a_file_changed_between_classification_and_registration_is_refused(synced_layouts, s3_server):
    s3 = s3_server.client()
    drop_files(s3, synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    files = classifier.work(synced_layouts, {"grouping_key": KEY})["files"]
    s3.put_object(Bucket=synced_layouts.bucket, Key=KEY + "medical_claims.csv", Body=b"changed")

    with pytest.raises(WorkerError, match="changed or vanished since classification"):
        registrar.work(synced_layouts, {"grouping_key": KEY, "grouping_method": "marker", "files": files})
    assert counts(synced_layouts.metadata_db_url)["submission"] == 0


def test_a_marker_alone_registers_nothing_and_says_why(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {})
    result = run_registrar(synced_layouts)
    assert result["submission_id"] is None and "no data files" in result["reason"]
    assert counts(synced_layouts.metadata_db_url)["submission"] == 0


def test_a_different_manifest_already_at_the_key_is_never_overwritten(synced_layouts, s3_server):
    s3 = s3_server.client()
    drop_files(s3, synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    files = classifier.work(synced_layouts, {"grouping_key": KEY})["files"]
    content = registrar.fingerprint(registrar.InboxObject(f["key"], f["size"], f["etag"]) for f in files)
    sid = registrar.submission_id_for(KEY, content)
    squatter = f"raw/acme/medical_claims/{sid}/_manifest.generated.json"
    s3.put_object(Bucket=synced_layouts.bucket, Key=squatter, Body=b"{}")

    with pytest.raises(WorkerError, match="different manifest already exists"):
        registrar.work(synced_layouts, {"grouping_key": KEY, "grouping_method": "marker", "files": files})
    assert read(synced_layouts, squatter) == b"{}"


def test_concurrent_registrations_of_one_group_make_one_submission(synced_layouts, s3_server):
    drop_files(
        s3_server.client(), synced_layouts.bucket, KEY, {f"medical_claims_{i}.csv": CLAIMS * i for i in range(1, 6)}
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: run_registrar(synced_layouts), range(4)))

    assert len({r["submission_id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert counts(synced_layouts.metadata_db_url) == {"submission": 1, "submission_file": 5, "inbox_object": 6}


def test_an_unknown_grouping_method_is_refused(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    with pytest.raises(WorkerError, match="grouping_method"):
        run_registrar(synced_layouts, method="guess")


def test_standalone_registrar_classifies_then_registers(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    done = subprocess.run(
        [sys.executable, "-m", "workers.registrar", "--grouping-key", KEY],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["worker"] == "registrar" and result["file_count"] == 1
    assert counts(synced_layouts.metadata_db_url)["submission"] == 1


@pytest.mark.parametrize("alias, recorded", [("marker", "MARKER_FILE"), ("quiescence", "QUIESCENCE")])
def test_an_older_spelling_of_the_grouping_method_is_recorded_under_the_seeds_name(
    synced_layouts, s3_server, alias, recorded
):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    result = run_registrar(synced_layouts, method=alias)
    assert result["grouping_method"] == recorded
    assert Manifest.from_bytes(read(synced_layouts, result["manifest_key"])).grouping_method == recorded


def test_an_unknown_grouping_method_is_refused_before_anything_is_written(synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    with pytest.raises(WorkerError, match="grouping_method must be one of MARKER_FILE, QUIESCENCE .* not 'vibes'"):
        run_registrar(synced_layouts, method="vibes")
    assert counts(synced_layouts.metadata_db_url) == {"submission": 0, "submission_file": 0, "inbox_object": 0}


@pytest.mark.parametrize(
    "spoil, field",
    [
        (lambda f: f.pop("etag"), "etag"),
        (lambda f: f.update(size="12"), "size"),
        (lambda f: f.update(size=True), "size"),
        (lambda f: f.update(layout_version="v1"), "layout_version"),
    ],
)
def test_a_malformed_hand_off_is_refused_naming_the_field_never_the_key(synced_layouts, s3_server, spoil, field):
    drop_files(s3_server.client(), synced_layouts.bucket, KEY, {"medical_claims.csv": CLAIMS})
    files = classifier.work(synced_layouts, {"grouping_key": KEY})["files"]
    spoil(files[0])
    with pytest.raises(WorkerError, match=f"classified file's '{field}' is missing or not") as refused:
        registrar.work(synced_layouts, {"grouping_key": KEY, "grouping_method": "MARKER_FILE", "files": files})
    assert "medical_claims" not in str(refused.value)
    assert counts(synced_layouts.metadata_db_url)["submission"] == 0
