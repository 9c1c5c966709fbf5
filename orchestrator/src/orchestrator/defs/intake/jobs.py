"""register_submission_from_group_job: classify, register and stage one complete inbox group;
register_submissions_from_groups_job: the same for several groups in one run, one after another.

The grouping key is in the run config (the job's contract: an operator launches it for a key);
everything else the run shows (logs, metadata, observations, failures) names the group by its
id (workers.inbox.group_id) and files by theirs, since a partner's key can carry a member's name.

The intake jobs run their steps in the run's own process (in_process_executor): a step's work is
its worker processes, so a process per step only added a code load (~1.5 s) to each step.
"""

import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from orchestrator.defs.intake import assets
from orchestrator.defs.resources import WorkerLauncher
from workers.discovery import MARKER, GroupingMethodInput, grouping_method
from workers.inbox import group_id
from workers.settings import load_recovery_settings

# Tags every intake run carries (retries keep their parent's): which group, which drop (the run
# key of the sensor's first request: group id @ content), which sweeper round asked for it.
PIPELINE_TAG = "health-intake/pipeline"
GROUP_TAG = "health-intake/group"
DROP_TAG = "health-intake/drop"
SUBMISSION_TAG = "health-intake/submission"
SWEEP_TAG = "health-intake/sweep"
# A batch run's tags for each of its groups are <tag>.<group id> (per_group): its drop, its group,
# and once the group has ended well in the run, DONE_TAG, so intake_sweeper asks again only for
# the groups a failed batch run did not finish.
DONE_TAG = "health-intake/done"
RECOVERY = load_recovery_settings()
# A failed run (its process lost included) is run again by Dagster (instance run_retries), whole:
# the classifier and registrar find what is registered already and the stager resumes.
RUN_RETRY_TAGS = {"dagster/max_retries": str(RECOVERY.run_retries), "dagster/retry_strategy": "ALL_STEPS"}


def per_group(tag: str, group: str) -> str:
    """A batch run's `tag` for one of its groups (by group id)."""
    return f"{tag}.{group}"


def drop_tag(run_key: str) -> str:
    """The drop's tag value: its run key in Dagster's strict tag form (which has no '@')."""
    return run_key.replace("@", "_")


# Reported by the workers as lists; the op shows them as tables, everything else as is.
TABLE_KEYS = ("file_table", "rejections", "stuck")
SHOWN_REJECTIONS = 20
# The characters that start a link, an image, an autolink, raw HTML, an entity, emphasis, a code
# span or a cell break; backslash-escaped (CommonMark allows it for each) they are only text.
MARKDOWN_INLINE = re.compile(r"([\\|\[\]<>!*_`~&])")


class GroupConfig(dg.Config):
    grouping_key: str = Field(description="The group's key prefix, e.g. inbox/acme/unknown/drop-001/")
    grouping_method: GroupingMethodInput = Field(
        default=MARKER,
        description="How the group was judged complete: MARKER_FILE or QUIESCENCE (or the older marker, quiescence)",
    )


@dg.op(out=dg.Out(str, is_required=False, description="The submission to stage"))
def register_submission_from_group(context: dg.OpExecutionContext, config: GroupConfig, launcher: WorkerLauncher):
    """Classifier, then registrar: one submission (with its manifest) for the group's new content."""
    with step_retries(context):
        yield from register(context, config, launcher)


def register(context: dg.OpExecutionContext, config: GroupConfig, launcher: WorkerLauncher):
    registered, metadata = register_group(context, config, launcher)
    if registered.get("submission_id"):
        yield dg.Output(registered["submission_id"], metadata=metadata)


def register_group(context: dg.OpExecutionContext, config: GroupConfig, launcher: WorkerLauncher) -> tuple[dict, dict]:
    """Classifier, then registrar, for one group: the registrar's report and the op metadata it makes."""
    classified = launcher.run(context=context, worker="classifier", extras={"grouping_key": config.grouping_key})
    extras = {
        "grouping_key": config.grouping_key,
        "grouping_method": grouping_method(config.grouping_method),
        "files": classified["files"],
    }
    registered = launcher.run(context=context, worker="registrar", extras=extras)
    receipt_sent(registered)
    if registered.get("rejections"):
        context.log_event(rejections_observed(registered["rejections"]))
    report_submission(context, registered)
    if not registered.get("submission_id"):
        context.log.warning(
            f"nothing registered for group {group_id(config.grouping_key)} of {registered.get('submitter_id')}: "
            f"{registered.get('reason')}"
        )
        return registered, {}
    return registered, as_metadata(
        {**registered, "classification": classified["counts"], "classifier": classified["classifier"]}
    )


@dg.op
def stage_submission(context: dg.OpExecutionContext, submission_id: str, launcher: WorkerLauncher) -> None:
    """Stager: server-side copies into raw/, each checked against the manifest's SHA-256."""
    stage(context, submission_id, launcher)


class SubmissionConfig(dg.Config):
    submission_id: str = Field(description="A registered submission's id (submission.submission_id)")


@dg.op
def stage_registered_submission(
    context: dg.OpExecutionContext, config: SubmissionConfig, launcher: WorkerLauncher
) -> None:
    """Stager, for a submission registered earlier whose staging never finished (the sweeper's)."""
    stage(context, config.submission_id, launcher)


def stage(context: dg.OpExecutionContext, submission_id: str, launcher: WorkerLauncher) -> None:
    with step_retries(context):
        staged = stage_worker(context, submission_id, launcher)
    context.add_output_metadata(as_metadata(staged))
    report_submission(context, staged)


def stage_worker(context: dg.OpExecutionContext, submission_id: str, launcher: WorkerLauncher) -> dict:
    staged = launcher.run(context=context, worker="stager", extras={"submission_id": submission_id})
    receipt_sent(staged)
    return staged


class GroupsConfig(dg.Config):
    groups: list[GroupConfig] = Field(
        description="The complete groups, each as register_submission_from_group's config", min_length=1
    )


@dg.op
def register_submissions_from_groups(
    context: dg.OpExecutionContext, config: GroupsConfig, launcher: WorkerLauncher
) -> None:
    """Classifier, registrar and stager for each group in turn: one submission per group, as the
    single-group job makes it. A group that fails is tried again (INTAKE_STEP_RETRIES rounds, after the
    others) and does not stop them; the step fails at the end naming the groups that still failed."""
    outcomes = register_groups(context, config.groups, launcher)
    failed = [o for o in outcomes if o["status"] == FAILED_GROUP]
    metadata: dict[str, dg.RawMetadataValue] = {
        "groups": len(outcomes),
        "failed": len(failed),
        "outcomes": dg.MetadataValue.md(markdown_table(outcomes)),
    }
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(outcomes)} group(s) failed: "
            + "; ".join(f"group {o['group_id']}: {o['error']}" for o in failed[:SHOWN_FAILURES]),
            metadata=metadata,
        )
    context.add_output_metadata(metadata)


FAILED_GROUP = "failed"
SHOWN_FAILURES = 5


def register_groups(context: dg.OpExecutionContext, groups: list[GroupConfig], launcher: WorkerLauncher) -> list[dict]:
    """Each group's outcome (group id, submission, status, error), in the groups' order."""
    retries = load_recovery_settings()
    outcomes: dict[str, dict] = {}
    pending = list(groups)
    for attempt in range(retries.step_retries + 1):
        if attempt:
            wait = retry_delay(retries.step_retry_delay_seconds, attempt - 1)
            context.log.warning(
                f"{len(pending)} group(s) again in {wait:.0f} s (retry {attempt} of {retries.step_retries})"
            )
            time.sleep(wait)
        for group in pending:
            outcome = outcomes[group.grouping_key] = group_outcome(context, group, launcher)
            if outcome["status"] != FAILED_GROUP:
                mark_done(context, outcome["group_id"])
        pending = [g for g in pending if outcomes[g.grouping_key]["status"] == FAILED_GROUP]
        if not pending:
            break
    return [outcomes[g.grouping_key] for g in groups]


def mark_done(context: dg.OpExecutionContext, group: str) -> None:
    """Tags the run with the group's DONE_TAG as soon as it has ended well, so a batch run that fails
    later (another group, a lost process) is not asked for again for this group. Without the tag the
    sweeper asks for the group again, which registers nothing twice: a warning, not a failure."""
    try:
        context.instance.add_run_tags(context.run_id, {per_group(DONE_TAG, group): "true"})
    except Exception as exc:  # the run storage; the group's own outcome stands
        context.log.warning(f"group {group}: could not tag the run as done ({type(exc).__name__})")


def group_outcome(context: dg.OpExecutionContext, group: GroupConfig, launcher: WorkerLauncher) -> dict:
    """One group registered and staged; a worker's failure is its outcome (by group id), not the step's."""
    outcome = {"group_id": group_id(group.grouping_key), "submission_id": "", "status": "", "error": ""}
    try:
        registered, _ = register_group(context, group, launcher)
        if not registered.get("submission_id"):
            return outcome | {"status": "nothing registered"}
        outcome["submission_id"] = registered["submission_id"]
        staged = stage_worker(context, registered["submission_id"], launcher)
        report_submission(context, staged)
        return outcome | {"status": staged.get("status", "")}
    except dg.Failure as failure:
        context.log.warning(f"group {outcome['group_id']} failed: {failure.description}")
        return outcome | {"status": FAILED_GROUP, "error": failure.description or ""}


# What a submission's entry in the catalog shows (submissions asset, the submitter's partition).
SUBMISSION_FIELDS = ("submission_id", "status", "file_type", "file_count", "total_bytes", "duplicate_of", "group_id")


def report_submission(context: dg.OpExecutionContext, report: dict) -> None:
    """The submission table changed for a submitter: a registration (registered or duplicate) or a
    staging reports a materialization of the submitter's partition of the submissions asset, so
    Catalog -> submissions -> {submitter} lists each delivery. A group that registered nothing but
    had objects rejected is an observation of that partition (the rejections are on the inbox too)."""
    submitter: str = report.get("submitter_id") or ""
    rejections = len(report.get("rejections") or [])
    if not submitter or not (report.get("submission_id") or rejections):
        return  # e.g. the job run again for a group staged and cleaned already: nothing to list
    try:
        if not context.instance.has_dynamic_partition(assets.SUBMITTERS, submitter):
            context.instance.add_dynamic_partitions(assets.SUBMITTERS, [submitter])
    except dg.DagsterInvariantViolationError as error:  # a key Dagster cannot take as a partition
        context.log.warning(f"submitter not shown in the catalog's submissions partitions: {error}")
        return
    if not report.get("submission_id"):
        context.log_event(
            dg.AssetObservation(
                asset_key=assets.submissions.key,
                partition=submitter,
                description=f"nothing registered: {report.get('reason', 'every object rejected')}",
                metadata={"rejections": rejections, "group_id": report.get("group_id", "")},
            )
        )
        return
    file_types = report.get("file_types") or sorted({f["file_type"] for f in report.get("file_table") or []})
    metadata: dict[str, dg.RawMetadataValue] = {k: report[k] for k in SUBMISSION_FIELDS if k in report}
    metadata["file_types"] = ", ".join(file_types)
    metadata["rejections"] = rejections
    context.log_event(
        dg.AssetMaterialization(
            asset_key=assets.submissions.key,
            partition=submitter,
            description=f"submission {report['submission_id']} {report['status']}",
            metadata=metadata,
        )
    )


def receipt_sent(report: dict) -> None:
    """A receipt the store refused fails the step, after everything else is recorded: the step's
    retries (and the sweeper's rounds after them) run the worker again, which finds the work done
    and puts the receipt. Without this a drop could end staged with its partner never told."""
    if report.get("receipt") == "failed":
        raise dg.Failure(
            description=f"receipt {report.get('receipt_id')} not written: {report.get('receipt_error')}",
            metadata={"submission_id": report.get("submission_id") or "", "receipt_id": report.get("receipt_id")},
        )


@contextmanager
def step_retries(context: dg.OpExecutionContext) -> Iterator[None]:
    """A worker's failure runs the step again in its run, INTAKE_STEP_RETRIES times after a doubling,
    jittered delay (an S3 server restarting, a database failover); every worker is idempotent, so
    a step never half-repeats anything. The last failure is the worker's own, not "retries exceeded"."""
    retries = load_recovery_settings()
    try:
        yield
    except dg.Failure as failure:
        attempt = context.retry_number
        if attempt >= retries.step_retries:
            raise
        wait = retry_delay(retries.step_retry_delay_seconds, attempt)
        context.log.warning(
            f"{failure.description}: step retry {attempt + 1} of {retries.step_retries} in {wait:.0f} s"
        )
        raise dg.RetryRequested(max_retries=retries.step_retries, seconds_to_wait=wait) from None


def retry_delay(first_seconds: float, attempt: int) -> float:
    return first_seconds * 2**attempt * random.uniform(0.75, 1.25)


def as_metadata(report: dict) -> dict:
    metadata = {k: v for k, v in report.items() if k not in TABLE_KEYS and k != "files"}
    for key in TABLE_KEYS:
        if report.get(key):
            metadata[key] = dg.MetadataValue.md(markdown_table(report[key]))
    return metadata


def rejections_observed(rejections: list[dict], on_record: int | None = None) -> dg.AssetObservation:
    """New inbox_rejection rows as an observation of the inbox asset: an entry in the UI that stays,
    where logs scroll away. File ids, reasons and sizes only: everything here lands in the event log."""
    table = markdown_table(rejections[:SHOWN_REJECTIONS])
    if len(rejections) > SHOWN_REJECTIONS:
        table += f"\n\nand {len(rejections) - SHOWN_REJECTIONS} more: `python -m workers.tables inbox_rejection`"
    table += "\n\nA file id's key: `python -m workers.tables --find <file id>`"
    metadata: dict[str, dg.RawMetadataValue] = {
        "new_rejections": len(rejections),
        "rejected": dg.MetadataValue.md(table),
    }
    if on_record is not None:
        metadata["rejections_on_record"] = on_record
    return dg.AssetObservation(
        asset_key=assets.inbox.key, description=f"{len(rejections)} inbox object(s) newly rejected", metadata=metadata
    )


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(markdown_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown_cell(value) -> str:
    """A partner's text (a declared file type, a layout id) is shown as written: a pipe or a line
    break cannot end the cell or the row, nor a bracket, '!', '<' or '&' make a link, an image or HTML."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return MARKDOWN_INLINE.sub(r"\\\1", text)


@dg.job(
    description="Register one complete inbox group as a submission and stage it into raw/.",
    tags={PIPELINE_TAG: "intake", **RUN_RETRY_TAGS},
    executor_def=dg.in_process_executor,
)
def register_submission_from_group_job():
    stage_submission(register_submission_from_group())


@dg.job(
    description="Register several complete inbox groups, each as its own submission, and stage each into raw/.",
    tags={PIPELINE_TAG: "intake", **RUN_RETRY_TAGS},
    executor_def=dg.in_process_executor,
)
def register_submissions_from_groups_job():
    register_submissions_from_groups()


@dg.job(
    description="Stage a submission registered earlier and left unstaged (asked for by intake_sweeper).",
    tags={PIPELINE_TAG: "intake", **RUN_RETRY_TAGS},
    executor_def=dg.in_process_executor,
)
def stage_submission_job():
    stage_registered_submission()
