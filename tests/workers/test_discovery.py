"""The pure core of inbox discovery: when a group is complete, from listings and the sensor's memory.

No S3 and no Dagster: listings are InboxObject / Upload values and time is passed in as `now`.
Only list_uploads' fallback talks HTTP, to a small fake (see AwsStyleUploadListing).
"""

import http.server
import json
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest

from tests.services import S3Server
from workers.discovery import (
    MARKER,
    QUIESCENCE,
    Evaluation,
    Sighting,
    Upload,
    dump_state,
    evaluate,
    list_uploads,
    load_state,
)
from workers.inbox import InboxObject, fingerprint, group_id
from workers.settings import load_intake_settings

SETTINGS = load_intake_settings({})  # defaults: inbox/, depth 3, _SUCCESS, 10 min, 24 h
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DROP = "inbox/acme/unknown/drop-001/"


def obj(key: str, size: int = 10, etag: str = "e1", last_modified: datetime | None = None) -> InboxObject:
    return InboxObject(key=key, size=size, etag=etag, last_modified=last_modified)


def upload(key: str, initiated: datetime = T0) -> Upload:
    return Upload(key=key, upload_id=f"upload-{key}", initiated=initiated)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ticks(*listings_at: tuple[float, list[InboxObject]], uploads: list[Upload] = ()) -> Evaluation:
    """Evaluate successive ticks, carrying the state through the cursor as the sensor does; the
    last evaluation."""
    state = {}
    for minutes, objects in listings_at:
        evaluation = evaluate(objects, uploads, state, at(minutes), SETTINGS)
        state = load_state(dump_state(evaluation.state))
    return evaluation


def test_a_group_with_its_marker_is_complete_at_once():
    evaluation = ticks((0, [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS", size=0)]))

    (complete,) = evaluation.complete
    assert complete.group.grouping_key == DROP and complete.method == MARKER
    assert complete.object_count == 2


def test_a_marker_below_the_group_root_does_not_close_the_group():
    evaluation = ticks((0, [obj(DROP + "a.csv"), obj(DROP + "sub/_SUCCESS")]))

    assert evaluation.complete == []


def test_a_group_without_marker_is_not_complete_when_first_seen():
    evaluation = ticks((0, [obj(DROP + "a.csv")]))

    assert evaluation.complete == []
    assert evaluation.state[group_id(DROP)].since == T0


def test_a_group_unchanged_for_the_quiescence_minutes_is_complete():
    files = [obj(DROP + "a.csv"), obj(DROP + "b.csv")]

    evaluation = ticks((0, files), (10, files))

    (complete,) = evaluation.complete
    assert complete.method == QUIESCENCE


def test_a_group_unchanged_for_less_than_the_quiescence_minutes_waits():
    files = [obj(DROP + "a.csv")]

    assert ticks((0, files), (9.9, files)).complete == []


def test_last_modified_does_not_count_as_quiet_time():
    long_ago = T0 - timedelta(days=30)

    evaluation = ticks((0, [obj(DROP + "a.csv", last_modified=long_ago)]))

    assert evaluation.complete == []


def test_a_file_added_during_the_quiet_window_restarts_the_clock():
    first = [obj(DROP + "a.csv")]
    more = first + [obj(DROP + "b.csv")]

    evaluation = ticks((0, first), (6, more), (12, more))

    assert evaluation.complete == []
    assert evaluation.state[group_id(DROP)].since == at(6)
    assert ticks((0, first), (6, more), (16, more)).complete[0].method == QUIESCENCE


def test_a_changed_size_or_etag_restarts_the_clock():
    rewritten = [obj(DROP + "a.csv", size=11, etag="e2")]

    evaluation = ticks((0, [obj(DROP + "a.csv")]), (6, rewritten), (12, rewritten))

    assert evaluation.complete == []


def test_a_requested_group_is_not_requested_again():
    files = [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS")]

    evaluation = ticks((0, files), (1, files), (60, files))

    assert evaluation.complete == []
    assert evaluation.state[group_id(DROP)].requested


def test_a_late_file_gives_a_new_run_key_for_the_same_group():
    files = [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS")]
    first = ticks((0, files)).complete[0]

    late = ticks((0, files), (5, files + [obj(DROP + "late.csv")])).complete[0]

    assert late.group.grouping_key == first.group.grouping_key
    assert late.run_key != first.run_key


def test_the_run_key_is_the_groups_id_and_the_fingerprint_never_the_key():
    complete = ticks((0, [obj(DROP + "_SUCCESS")])).complete[0]

    assert complete.run_key == f"{group_id(DROP)}@{complete.fingerprint[:16]}"
    assert "drop-001" not in complete.run_key


def test_an_upload_in_progress_holds_a_marked_group_open():
    files = [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS")]

    evaluation = ticks((0, files), uploads=[upload(DROP + "big.bin")])

    assert evaluation.complete == []
    assert list(evaluation.blocked) == [DROP]
    assert not evaluation.state[group_id(DROP)].requested


def test_an_upload_in_progress_holds_a_quiet_group_open():
    files = [obj(DROP + "a.csv")]

    evaluation = ticks((0, files), (60, files), uploads=[upload(DROP + "nested/big.bin", initiated=at(-1))])

    assert evaluation.complete == []


def test_an_upload_into_another_group_does_not_hold_this_one():
    files = [obj(DROP + "_SUCCESS")]

    evaluation = ticks((0, files), uploads=[upload("inbox/acme/unknown/drop-002/big.bin")])

    assert [c.group.grouping_key for c in evaluation.complete] == [DROP]


def test_an_upload_older_than_the_abandoned_hours_no_longer_holds_the_group():
    stale = upload(DROP + "big.bin", initiated=T0 - timedelta(hours=24, seconds=1))

    evaluation = ticks((0, [obj(DROP + "_SUCCESS")]), uploads=[stale])

    assert [c.method for c in evaluation.complete] == [MARKER]
    assert evaluation.abandoned_uploads == [stale]
    assert evaluation.blocked == {}


def test_an_upload_just_younger_than_the_abandoned_hours_still_holds_the_group():
    recent = upload(DROP + "big.bin", initiated=T0 - timedelta(hours=23, minutes=59))

    evaluation = ticks((0, [obj(DROP + "_SUCCESS")]), uploads=[recent])

    assert evaluation.complete == [] and evaluation.abandoned_uploads == []


def test_keys_too_shallow_for_a_group_are_reported():
    shallow = ["inbox/top.csv", "inbox/acme/x.csv", "inbox/acme/unknown/only-two.csv", "inbox/acme/unknown/d1/"]

    evaluation = ticks((0, [obj(key) for key in shallow] + [obj(DROP + "a.csv")]))

    assert evaluation.shallow_keys == shallow
    assert list(evaluation.state) == [group_id(DROP)]


def test_groups_no_longer_listed_are_dropped_from_the_state():
    evaluation = ticks((0, [obj(DROP + "_SUCCESS"), obj("inbox/b/c/d/x")]), (1, [obj("inbox/b/c/d/x")]))

    assert list(evaluation.state) == [group_id("inbox/b/c/d/")]


def test_odd_keys_group_by_their_segments():
    odd = "inbox/açme corp/+%20/dröp 1/файл name+%.csv"

    evaluation = ticks((0, [obj(odd), obj("inbox/açme corp/+%20/dröp 1/_SUCCESS")]))

    (complete,) = evaluation.complete
    assert complete.group.grouping_key == "inbox/açme corp/+%20/dröp 1/"
    assert complete.group.submitter_id == "açme corp" and complete.group.drop_id == "dröp 1"


def test_unsafe_keys_form_no_group_and_are_reported_with_the_shallow_ones():
    unsafe = [DROP + "a\x01.csv", DROP + "sub/../x.csv", DROP + "a\\b.csv", "inbox/acme/unknown/d\t2/x.csv"]

    evaluation = ticks((0, [obj(key) for key in unsafe] + [obj(DROP + "ok.csv")]))

    assert evaluation.shallow_keys == unsafe
    assert list(evaluation.state) == [group_id(DROP)]


def test_grouping_follows_the_configured_depth_and_prefix():
    settings = load_intake_settings({"INBOX_PREFIX": "drops/in/", "GROUP_BY_DEPTH": "2"})

    evaluation = evaluate([obj("drops/in/acme/d7/_SUCCESS"), obj("drops/in/acme/x.csv")], [], {}, T0, settings)

    assert [c.group.grouping_key for c in evaluation.complete] == ["drops/in/acme/d7/"]
    assert evaluation.shallow_keys == ["drops/in/acme/x.csv"]


def test_the_state_survives_the_cursor_round_trip():
    """A pending group whole; a requested one as its content version (the run key's), no clock."""
    state = {
        "inbox/açme/\x01/d 1/": Sighting(fingerprint="f" * 64, since=T0, requested=True),
        DROP: Sighting(fingerprint="0" * 64, since=at(3)),
    }

    assert load_state(dump_state(state)) == {
        "inbox/açme/\x01/d 1/": Sighting(fingerprint="f" * 16, since=None, requested=True),
        DROP: Sighting(fingerprint="0" * 64, since=at(3)),
    }


def test_a_requested_group_read_back_from_the_cursor_is_not_requested_again_for_the_same_content():
    listing = [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS", size=0)]

    again = ticks((0, listing), (5, listing), (60, listing))

    assert again.complete == []
    assert again.state[group_id(DROP)].requested


def test_a_late_file_after_the_cursor_round_trip_is_a_new_request_with_a_new_run_key():
    listing = [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS", size=0)]
    (first,) = ticks((0, listing)).complete

    (late,) = ticks((0, listing), (5, [*listing, obj(DROP + "late.csv")])).complete

    assert late.run_key != first.run_key and late.run_key.startswith(group_id(DROP) + "@")
    assert late.object_count == 3


def test_a_requested_group_quiet_again_after_a_change_is_requested_by_quiescence():
    """A group closed by quiet time that changes later gets a new quiet clock, not the old one."""
    first = [obj(DROP + "a.csv")]
    later = [*first, obj(DROP + "b.csv")]

    evaluations = [ticks((0, first), (10, first), (11, later), (11 + m, later)) for m in (9, 10)]

    assert evaluations[0].complete == []
    (complete,) = evaluations[1].complete
    assert complete.method == QUIESCENCE and complete.object_count == 2


def test_the_cursor_is_versioned_json_of_the_pending_groups_by_id():
    evaluation = ticks((0, [obj(DROP + "a.csv")]))

    cursor = json.loads(dump_state(evaluation.state))

    assert cursor == {
        "version": 4,
        "groups": {group_id(DROP): {"fingerprint": fingerprint([obj(DROP + "a.csv")]), "since": T0.isoformat()}},
        "requested": {},
    }
    assert "drop-001" not in dump_state(evaluation.state)


def test_requested_groups_are_kept_apart_as_their_content_version():
    listing = [obj(DROP + "a.csv"), obj(DROP + "_SUCCESS", size=0)]
    (complete,) = ticks((0, listing)).complete

    cursor = json.loads(dump_state(ticks((0, listing)).state))

    assert cursor["groups"] == {}
    assert cursor["requested"] == {group_id(DROP): fingerprint(listing)[:16]}
    assert complete.run_key == f"{group_id(DROP)}@{cursor['requested'][group_id(DROP)]}"


def test_a_version_3_cursor_is_still_read():
    """What the sensor wrote before requested groups were kept apart (an upgrade keeps its state)."""
    cursor = json.dumps(
        {
            "version": 3,
            "groups": {
                "g-a": {"fingerprint": "a" * 64, "since": T0.isoformat(), "requested": True},
                "g-b": {"fingerprint": "b" * 64, "since": at(1).isoformat(), "requested": False},
            },
        }
    )

    assert load_state(cursor) == {
        "g-a": Sighting(fingerprint="a" * 64, since=T0, requested=True),
        "g-b": Sighting(fingerprint="b" * 64, since=at(1)),
    }


def test_no_cursor_is_an_empty_state():
    assert load_state(None) == {} and load_state("") == {}


@pytest.mark.parametrize(
    "cursor",
    [
        "not json",
        "[]",
        '{"version": 1, "groups": {}}',
        '{"version": 2}',
        '{"version": 2, "groups": {"k": {}}}',
        '{"version": 2, "groups": {"k": {"fingerprint": "a", "since": "2026-03-01T12:00:00", "requested": false}}}',
        '{"version": 3, "groups": {"k": {"fingerprint": "a", "since": "2026-03-01T12:00:00+00:00"}}}',
        '{"version": 4, "groups": {}}',
        '{"version": 4, "groups": {}, "requested": {"k": {"fingerprint": "a"}}}',
        '{"version": 4, "groups": {}, "requested": {"k": "abc"}}',
    ],
)
def test_an_unreadable_cursor_is_a_value_error(cursor):
    with pytest.raises(ValueError):
        load_state(cursor)


def test_a_state_from_another_tick_is_not_changed_in_place():
    state = {DROP: Sighting(fingerprint="old", since=T0)}
    before = dict(state)

    evaluate([obj(DROP + "_SUCCESS")], [], state, at(1), SETTINGS)

    assert state == before


class AwsStyleUploadListing(http.server.BaseHTTPRequestHandler):
    """Answers ListMultipartUploads as AWS does for a key holding a control character.

    A fake because SeaweedFS, the S3 server the suite runs, sends such keys as U+FFFD instead.
    Raw, AWS writes the character as an XML reference no parser accepts; URL-encoded, it is readable.
    """

    KEY = "inbox/acme/unknown/d\x01 1/big+.bin"

    def do_GET(self):
        encoded = parse_qs(urlsplit(self.path).query).get("encoding-type") == ["url"]
        key = quote_plus(self.KEY, safe="/") if encoded else self.KEY.replace("\x01", "&#x1;")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>b</Bucket>'
            f"<IsTruncated>false</IsTruncated><Upload><Key>{key}</Key><UploadId>u-1</UploadId>"
            "<Initiated>2026-03-01T12:00:00.000Z</Initiated></Upload></ListMultipartUploadsResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def aws_style_s3():
    server = http.server.HTTPServer(("127.0.0.1", 0), AwsStyleUploadListing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield S3Server(f"http://127.0.0.1:{server.server_port}", "key", "secret").client()
    server.shutdown()


def test_upload_keys_with_control_characters_are_listed_url_encoded(aws_style_s3):
    (upload_in_progress,) = list_uploads(aws_style_s3, "bucket-x", "inbox/")

    assert upload_in_progress.key == AwsStyleUploadListing.KEY
    assert upload_in_progress.initiated == T0
