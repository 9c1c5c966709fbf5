import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from workers import layouts
from workers.db import make_engine
from workers.runtime import WorkerError

A = {"layout_id": "a", "submitter_id": "*", "filename_pattern": "a*.csv", "file_type": "alpha", "version": 1}
B = {"layout_id": "b", "submitter_id": "acme", "filename_pattern": "b*.csv", "file_type": "beta", "version": 1}


def definitions(*entries: dict) -> list[layouts.Layout]:
    return layouts.parse_definitions(json.dumps({"registry_version": 1, "layouts": list(entries)}))[1]


def registry(url: str) -> dict[str, tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT layout_id, filename_pattern, version, active, retired_at FROM layout_registry")
        )
        result = {r.layout_id: (r.filename_pattern, r.version, bool(r.active), r.retired_at is not None) for r in rows}
    engine.dispose()
    return result


def test_the_packaged_definitions_parse():
    version, parsed = layouts.parse_definitions(layouts.packaged_definitions())
    assert version >= 1 and len(parsed) >= 5


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([{**A, "version": 0}], "integer version >= 1"),
        ([{k: v for k, v in A.items() if k != "file_type"}], "must have the fields"),
        ([A, {**A, "file_type": "other"}], "repeat layout_id a"),
        ([{**A, "filename_pattern": " "}], "empty or non-text field"),
    ],
)
def test_malformed_definitions_are_refused_with_the_reason(entries, reason):
    with pytest.raises(WorkerError, match=reason):
        definitions(*entries)


def test_not_json_is_refused():
    with pytest.raises(WorkerError, match="malformed"):
        layouts.parse_definitions("{not json")


def test_first_sync_adds_and_a_second_changes_nothing(migrated_db_url):
    engine = make_engine(migrated_db_url)
    assert layouts.sync(engine, definitions(A, B)) == {"added": 2, "changed": 0, "retired": 0, "unchanged": 0}
    assert layouts.sync(engine, definitions(A, B)) == {"added": 0, "changed": 0, "retired": 0, "unchanged": 2}


def test_a_changed_layout_with_a_version_bump_is_updated(migrated_db_url):
    engine = make_engine(migrated_db_url)
    layouts.sync(engine, definitions(A))
    counts = layouts.sync(engine, definitions({**A, "filename_pattern": "aa*.csv", "version": 2}))
    assert counts["changed"] == 1
    assert registry(migrated_db_url)["a"] == ("aa*.csv", 2, True, False)


def test_a_change_without_a_version_bump_is_refused_and_nothing_is_written(migrated_db_url):
    engine = make_engine(migrated_db_url)
    layouts.sync(engine, definitions(A, B))
    with pytest.raises(WorkerError, match="without a version bump"):
        layouts.sync(engine, definitions({**A, "filename_pattern": "zz*.csv"}, {**B, "version": 2, "file_type": "b2"}))
    assert registry(migrated_db_url)["a"][0] == "a*.csv"
    assert registry(migrated_db_url)["b"][1] == 1


def test_a_layout_dropped_from_the_file_is_retired_not_deleted_and_can_return(migrated_db_url):
    engine = make_engine(migrated_db_url)
    layouts.sync(engine, definitions(A, B))
    assert layouts.sync(engine, definitions(A))["retired"] == 1
    assert registry(migrated_db_url)["b"] == ("b*.csv", 1, False, True)
    assert [layout.layout_id for layout in layouts.active_layouts(engine)] == ["a"]
    assert layouts.sync(engine, definitions(A, B))["changed"] == 1
    assert registry(migrated_db_url)["b"] == ("b*.csv", 1, True, False)


def test_standalone_sync_reports_counts(platform_env, tmp_path):
    path, feeds = tmp_path / "layouts.json", tmp_path / "feeds.json"
    path.write_text(json.dumps({"registry_version": 7, "layouts": [A, B]}))
    feeds.write_text(json.dumps({"registry_version": 1, "feeds": []}))  # the packaged feeds' types are not alpha, beta
    done = subprocess.run(
        [sys.executable, "-m", "workers.layouts", "--definitions", str(path), "--feeds", str(feeds)],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["added"], result["active"], result["registry_version"]) == (2, 2, 7)
