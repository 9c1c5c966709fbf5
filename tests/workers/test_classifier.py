import pytest

from tests.helpers import drop_files
from workers import classifier
from workers.classifier import load_classifier, submitter_filename
from workers.inbox import Group, InboxObject
from workers.layouts import Layout
from workers.runtime import WorkerError

ACME = Group("inbox/acme/unknown/drop-001/", "acme", "unknown")
LAYOUTS = [
    Layout("acme_claims", "acme", "medical_claims*.csv", "medical_claims", 3),
    Layout("claims", "*", "medical_claims*.csv", "medical_claims", 1),
    Layout("rx", "*", "pharmacy*.csv", "pharmacy_claims", 1),
    Layout("rx_alt", "*", "*_rx.csv", "pharmacy_claims_v2", 1),
]


def classify(name: str, group: Group = ACME):
    return submitter_filename(group, InboxObject(group.grouping_key + name, 1, "e"), LAYOUTS)


def test_the_submitters_own_layout_takes_precedence_over_a_wildcard():
    result = classify("medical_claims_2026.csv")
    assert (result.classification, result.layout_id, result.layout_version) == ("classified", "acme_claims", 3)


def test_other_submitters_fall_back_to_the_wildcard_layout():
    result = classify("medical_claims.csv", Group("inbox/beta/unknown/d/", "beta", "unknown"))
    assert (result.classification, result.layout_id, result.file_type) == ("classified", "claims", "medical_claims")


def test_matching_ignores_case():
    assert classify("MEDICAL_CLAIMS.CSV").layout_id == "acme_claims"


def test_a_file_matching_no_layout_is_unknown():
    result = classify("notes.txt")
    assert (result.classification, result.file_type, result.layout_id) == ("unknown", "unknown", None)


def test_a_file_matching_two_layouts_is_flagged_not_guessed():
    result = classify("pharmacy_rx.csv")
    assert result.classification == "ambiguous"
    assert result.layout_id is None and result.file_type == "unknown"
    assert "rx, rx_alt" in result.detail


def test_implementations_load_by_name_or_dotted_path():
    assert load_classifier("submitter_filename") is submitter_filename
    assert load_classifier("workers.classifier:submitter_filename") is submitter_filename
    assert load_classifier("workers.classifier.submitter_filename") is submitter_filename


@pytest.mark.parametrize(
    "name", ["nope", "no.such.module:f", "workers.classifier:missing", "workers.classifier:CLASSIFIED"]
)
def test_an_unloadable_implementation_is_refused_by_name(name):
    with pytest.raises(WorkerError, match="CLASSIFIER_IMPL"):
        load_classifier(name)


def test_the_worker_classifies_each_data_file_of_the_group_and_skips_the_marker(synced_layouts, s3_server):
    key = "inbox/acme/unknown/drop-001/"
    drop_files(s3_server.client(), synced_layouts.bucket, key, {"medical_claims.csv": b"a,b\n", "sub dir/x.bin": b"?"})

    result = classifier.work(synced_layouts, {"grouping_key": key})

    by_key = {f["key"]: f for f in result["files"]}
    assert set(by_key) == {key + "medical_claims.csv", key + "sub dir/x.bin"}
    assert by_key[key + "medical_claims.csv"]["file_type"] == "medical_claims"
    assert result["counts"] == {"classified": 1, "unknown": 1, "ambiguous": 0}


def test_the_worker_refuses_a_malformed_grouping_key(synced_layouts):
    with pytest.raises(WorkerError, match="malformed"):
        classifier.work(synced_layouts, {"grouping_key": "inbox/acme/"})
