"""python -m workers.tables: the operator's way from an id shown in the UI back to the key."""

import sqlalchemy as sa

from workers import tables
from workers.db import make_engine
from workers.inbox import file_id, group_id

GROUP = "inbox/acme/unknown/Jane-Roe/"
KEY = GROUP + "John-Q-Patient.csv"


def reject(url: str, key: str, grouping_key: str | None) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO inbox_rejection (key, etag, size_bytes, grouping_key, reason, first_seen_at, "
                "last_seen_at) VALUES (:k, 'e', 1, :g, 'r', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"k": key, "g": grouping_key},
        )
    engine.dispose()


def test_find_prints_the_key_behind_a_file_id(platform_env, capsys):
    reject(platform_env.metadata_db_url, KEY, GROUP)
    reject(platform_env.metadata_db_url, GROUP + "other.csv", GROUP)

    assert tables.main(["--find", file_id(KEY)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["table", "id", "key"]
    assert lines[2:] == [f"inbox_rejection  1   {KEY}"]


def test_find_prints_the_key_behind_a_group_id(platform_env, capsys):
    reject(platform_env.metadata_db_url, KEY, GROUP)

    assert tables.main(["--find", group_id(GROUP)]) == 0

    assert GROUP in capsys.readouterr().out


def test_an_unknown_id_finds_no_row(platform_env, capsys):
    reject(platform_env.metadata_db_url, KEY, GROUP)

    assert tables.main(["--find", "f-000000000000"]) == 0

    assert KEY not in capsys.readouterr().out
