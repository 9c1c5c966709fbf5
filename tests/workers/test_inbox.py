"""The inbox layout's pure functions: stable ids in place of keys, and keys refused for their shape."""

import pytest

from workers.inbox import file_id, group_id, group_of, rejection_reason, unsafe_segment

PREFIX, DEPTH = "inbox/", 3
DROP = "inbox/acme/unknown/Jane-Roe-1970/"


def test_a_group_and_a_file_are_named_by_a_short_stable_digest_that_spells_nothing_of_the_key():
    key = DROP + "John-Q-Patient.csv"
    assert group_id(DROP) == group_id(DROP) and file_id(key) == file_id(key)
    assert group_id(DROP).startswith("g-") and file_id(key).startswith("f-")
    assert len(group_id(DROP)) == len(file_id(key)) == 14
    assert not any(part in group_id(DROP) + file_id(key) for part in ("Jane", "Roe", "John", "Patient", "acme"))


def test_distinct_keys_get_distinct_ids():
    keys = [DROP + f"file-{n}.csv" for n in range(1000)]
    assert len({file_id(key) for key in keys}) == 1000


def test_an_unencodable_key_still_gets_an_id():
    assert file_id("inbox/acme/unknown/d/\udcff.csv").startswith("f-")


@pytest.mark.parametrize(
    ("key", "unsafe"),
    [
        (DROP + "../x.csv", "a '.' or '..' path segment"),
        (DROP + "./x.csv", "a '.' or '..' path segment"),
        ("inbox/acme/../d/x.csv", "a '.' or '..' path segment"),
        (DROP + "..", "a '.' or '..' path segment"),
        (DROP + "a\\b.csv", "a backslash"),
        (DROP + "tab\there.csv", "a control character"),
        (DROP + "bell\x07.csv", "a control character"),
        (DROP + "line\nbreak.csv", "a control character"),
        (DROP + "del\x7f.csv", "a control character"),
        ("inbox/acme/unknown/d\x01/x.csv", "a control character"),
    ],
)
def test_a_key_with_dot_segments_backslashes_or_control_characters_is_rejected_by_the_platform(key, unsafe):
    assert unsafe_segment(key) == unsafe
    assert group_of(key, PREFIX, DEPTH) is None
    assert rejection_reason(key, PREFIX, DEPTH) == f"unsafe key: {unsafe} (refused by the platform, never staged)"


@pytest.mark.parametrize(
    "key", [DROP + "a..b.csv", DROP + ".hidden", DROP + "file.", DROP + "..x", DROP + "é €.csv", DROP + "a+b%20.csv"]
)
def test_dots_inside_a_name_and_other_odd_but_safe_keys_still_group(key):
    assert unsafe_segment(key) is None
    assert group_of(key, PREFIX, DEPTH).grouping_key == DROP


def test_a_shallow_key_is_still_rejected_as_too_shallow():
    assert rejection_reason("inbox/acme/x.csv", PREFIX, DEPTH).startswith("too shallow")
