"""Classifier worker: gives each data file of a group a file type and a layout from layout_registry.

The implementation is chosen by CLASSIFIER_IMPL: a registered name (`submitter_filename`, the
default) or a dotted path `package.module:function` with the signature of `submitter_filename`.
A file that matches no layout is `unknown`; one that matches two is `ambiguous`, never guessed.
"""

from __future__ import annotations

import fnmatch
import importlib
import posixpath
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_type_hints

from workers.db import metadata_engine
from workers.faults import checkpoint
from workers.inbox import UNKNOWN, Group, InboxObject, file_id, group_from_params, group_id, group_of, list_objects
from workers.layouts import Layout, active_layouts
from workers.runtime import Metadata, WorkerError, run_worker
from workers.settings import IntakeSettings, Settings, load_intake_settings
from workers.store import make_s3_client

CLASSIFIED, AMBIGUOUS = "classified", "ambiguous"


@dataclass(frozen=True)
class Classification:
    file_type: str
    layout_id: str | None
    layout_version: int | None
    classification: str  # classified | unknown | ambiguous
    detail: str


Classifier = Callable[[Group, InboxObject, Sequence[Layout]], Classification]


@dataclass(frozen=True)
class ClassifiedFile:
    """One data file of a group and how it classified: the classifier's hand-off to the registrar.
    Across the Pipes boundary (the classifier's report, the registrar's extras) it travels as the
    dict `to_record` gives, read back by `from_record`."""

    key: str
    size: int
    etag: str
    file_type: str
    layout_id: str | None
    layout_version: int | None
    classification: str  # classified | unknown | ambiguous
    detail: str

    @property
    def object(self) -> InboxObject:
        return InboxObject(self.key, self.size, self.etag)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> ClassifiedFile:
        """The file a record describes; WorkerError naming the field (never the key) when it is malformed."""
        if not isinstance(record, Mapping):
            raise WorkerError(f"a classified file is a mapping, not {type(record).__name__}")
        for name, kind in FIELD_TYPES.items():
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise WorkerError(f"a classified file's {name!r} is missing or not {getattr(kind, '__name__', kind)}")
        return cls(**{name: record[name] for name in FIELD_TYPES})


# The fields' declared types, resolved once: what from_record checks a record against.
FIELD_TYPES: dict[str, Any] = get_type_hints(ClassifiedFile)


def submitter_filename(group: Group, obj: InboxObject, layouts: Sequence[Layout]) -> Classification:
    """Match the file name against the submitter's own layouts first, then the wildcard ones.

    Precedence between the two tiers is a rule, not a guess; two matches within a tier are.
    """
    name = posixpath.basename(obj.key).lower()
    for tier in (group.submitter_id, "*"):
        matches = [
            layout
            for layout in layouts
            if layout.submitter_id == tier and fnmatch.fnmatchcase(name, layout.filename_pattern.lower())
        ]
        if len(matches) == 1:
            (layout,) = matches
            return Classification(
                layout.file_type, layout.layout_id, layout.version, CLASSIFIED, f"matched {layout.filename_pattern}"
            )
        if len(matches) > 1:
            ids = ", ".join(sorted(m.layout_id for m in matches))
            return Classification(UNKNOWN, None, None, AMBIGUOUS, f"matches several layouts: {ids}")
    return Classification(UNKNOWN, None, None, UNKNOWN, "matches no active layout")


CLASSIFIERS: dict[str, Classifier] = {"submitter_filename": submitter_filename}


def load_classifier(name: str) -> Classifier:
    if name in CLASSIFIERS:
        return CLASSIFIERS[name]
    module_name, _, attribute = name.replace(":", ".").rpartition(".")
    try:
        classifier = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError):
        raise WorkerError(
            f"CLASSIFIER_IMPL {name!r} is neither a known classifier ({', '.join(CLASSIFIERS)}) "
            "nor an importable package.module:function"
        ) from None
    if not callable(classifier):
        raise WorkerError(f"CLASSIFIER_IMPL {name!r} is not callable")
    return classifier


def classify_group(
    group: Group, objects: Sequence[InboxObject], layouts: Sequence[Layout], classifier: Classifier, marker: str
) -> list[ClassifiedFile]:
    """One per data file. An empty marker at the group root is not data; a marker with content
    is, so that its bytes are registered and staged rather than lost with the marker."""
    marker_key = group.marker_key(marker)
    return [
        ClassifiedFile(obj.key, obj.size, obj.etag, **asdict(classifier(group, obj, layouts)))
        for obj in objects
        if obj.key != marker_key or obj.size > 0
    ]


def classify(settings: Settings, group: Group, intake: IntakeSettings) -> list[ClassifiedFile]:
    """The group's data files as they are listed now, each classified against the active layouts."""
    classifier = load_classifier(intake.classifier_impl)
    with metadata_engine(settings.metadata_db_url) as engine:
        layouts = active_layouts(engine)
    # Folder placeholders ("sub/") are no files; the sensor records them in inbox_rejection.
    objects = [
        obj
        for obj in list_objects(make_s3_client(settings), settings.bucket, group.grouping_key)
        if group_of(obj.key, intake.inbox_prefix, intake.group_by_depth) == group
    ]
    return classify_group(group, objects, layouts, classifier, intake.marker_file)


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    intake = load_intake_settings()
    group = group_from_params(params, intake)
    files = classify(settings, group, intake)
    checkpoint("classifier.classified")
    counts = {kind: sum(f.classification == kind for f in files) for kind in (CLASSIFIED, UNKNOWN, AMBIGUOUS)}
    return {
        "group_id": group_id(group.grouping_key),
        "submitter_id": group.submitter_id,
        "classifier": intake.classifier_impl,
        "file_count": len(files),
        "counts": counts,
        "files": [f.to_record() for f in files],
        "file_table": [
            {
                "file_id": file_id(f.key),
                "size_bytes": f.size,
                "classification": f.classification,
                "file_type": f.file_type,
                "layout_id": f.layout_id or "",
            }
            for f in files
        ],
    }


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--grouping-key", dest="grouping_key", help="required; e.g. inbox/acme/unknown/drop-001/")

    return run_worker("classifier", work, argv, arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
