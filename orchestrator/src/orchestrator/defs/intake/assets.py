import dagster as dg

from orchestrator.defs.resources import WorkerLauncher

inbox = dg.AssetSpec(
    "inbox",
    group_name="intake",
    kinds={"s3"},
    description=(
        "The inbox partners upload into, listed by inbox_discovery_sensor. Each observation lists the "
        "objects newly rejected (file id, reason, size), whose keys inbox_rejection keeps for good."
    ),
)

# Partners are few and drops many: a partition per submitter, added when its first drop is registered.
SUBMITTERS = "submitters"
submitters = dg.DynamicPartitionsDefinition(name=SUBMITTERS)

submissions = dg.AssetSpec(
    "submissions",
    group_name="intake",
    kinds={"postgres"},
    deps=[inbox, "sync_layout_registry"],  # files are classified by the synced layouts
    partitions_def=submitters,
    description=(
        "Registered submissions (the submission table), partitioned by submitter: each registration, "
        "duplicate or staging reports a materialization of the submitter's partition with the "
        "submission id, file count, bytes, file types, duplicates and rejections."
    ),
)


@dg.asset(
    group_name="intake",
    kinds={"python"},
    description=(
        "layout_registry and feed_registry, synced from the versioned workers/layout_definitions.json "
        "and feed_definitions.json: counts of layouts and feeds added, changed and retired."
    ),
)
def sync_layout_registry(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
    return launcher.materialize(context=context, worker="layouts")
