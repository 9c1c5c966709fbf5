import dagster as dg

from orchestrator.defs.intake import assets
from orchestrator.defs.intake.jobs import as_metadata
from orchestrator.defs.resources import WorkerLauncher

raw_zone = dg.AssetSpec(
    "raw_zone",
    group_name="intake",
    kinds={"s3"},
    deps=[assets.submissions],
    description="The immutable raw zone: raw/{submitter_id}/{file_type}/{submission_id}/..., written by the stager.",
)


@dg.asset_check(
    asset="raw_zone",
    description=(
        "Holds the newest staged submissions' raw copies and manifests to the versions recorded when "
        "they were written: flags overwritten, hidden, missing, changed, unlocked or unrecorded ones."
    ),
)
def raw_copies_match_manifests(context: dg.AssetCheckExecutionContext, launcher: WorkerLauncher) -> dg.AssetCheckResult:
    report = launcher.run(context=context.op_execution_context, worker="audit", extras={"limit": 50})
    metadata = as_metadata({k: v for k, v in report.items() if k not in ("passed", "finding_table")})
    if report["finding_table"]:
        metadata["findings_by_file"] = dg.MetadataValue.json(report["finding_table"])
    return dg.AssetCheckResult(passed=bool(report["passed"]), metadata=metadata)


@dg.asset_check(
    asset="inbox",
    name="no_stuck_drops",
    description=(
        "Fails while a drop is stuck: its retries spent, or unstaged for longer than STUCK_AFTER_MINUTES. "
        "intake_sweeper records this verdict whenever it changes; running the check asks the database now."
    ),
)
def no_stuck_drops(context: dg.AssetCheckExecutionContext, launcher: WorkerLauncher) -> dg.AssetCheckResult:
    report = launcher.run(context=context.op_execution_context, worker="audit", extras={"stuck": True})
    metadata = as_metadata({"stuck_drops": report["stuck_drops"], "stuck": report["stuck_table"]})
    return dg.AssetCheckResult(passed=bool(report["passed"]), metadata=metadata)
