"""The inbox sensor's run requests: one single-group run for a lone complete group, batch runs for more.

A run's start-up (queue, run process, code load) cost more than a small drop's three workers, so
a tick that finds many complete groups registers them BATCH_SIZE to a run
(register_submissions_from_groups_job); each group still gets its own submission and outcome.

Run keys. A lone group's is its drop's (group id @ content), as ever. A batch's names its drops
(a digest of their run keys), so a replayed tick asks for nothing new; after a lost cursor the
same groups can come back in another composition and run again, which registers nothing twice:
the classifier and registrar find the content registered and the stager resumes or finds it done.

Tags. Each group of a batch is a tag `health-intake/drop.<group id>` whose value is the drop's tag,
and a tag `health-intake/group.<group id>` whose value is the group id, so a drop's runs and a
group's runs are found by tag in a batch as in a single-group run (RunsFilter on that pair). As each
group ends well the run gets `health-intake/done.<group id>`: intake_sweeper takes a failed batch
run's other groups up one by one, each with the single-group job (single_group_run).
"""

import hashlib
from collections.abc import Mapping

import dagster as dg

from orchestrator.defs.intake import jobs
from orchestrator.defs.intake.sensors import tag_value
from workers.discovery import CompleteGroup
from workers.inbox import group_id

# At ~2.5 s of workers per drop a batch of 25 takes about a minute: a later tick's groups wait no
# longer than that for a free run slot, and a run retry repeats at most that.
BATCH_SIZE = 25
# Off for now (issue 15, measured 2026-12-06: ~1.9x the drops per hour of one run each).
# intake_sweeper now takes up the drops of a failed batch run (its seen_by, tested on a real failed
# batch run); what is still missing before this is switched on is the reliability suite's kills and
# outages run with batch runs, and the benchmark's burst measured with them. The other blocker found
# on 2026-12-06, dev-mode run monitoring failing any run older than ~45 s (the proxy code server
# `dagster dev` starts answers GetCurrentRuns UNIMPLEMENTED), is fixed in dagster_internals.holds_run.
BATCH_RUNS = False
BATCH_TAG = "health-intake/batch"
SUBMITTER_TAG = "health-intake/submitter"
METHOD_TAG = "health-intake/grouping-method"


def run_requests(completes: list[CompleteGroup]) -> list[dg.RunRequest]:
    """The single-group job for one complete group; batch runs of up to BATCH_SIZE for several."""
    if len(completes) <= 1 or not BATCH_RUNS:
        return [single_request(c) for c in completes]
    # Batches of equal size (30 groups: 15 + 15, not 25 + 5), so the runs end together.
    count = -(-len(completes) // BATCH_SIZE)
    size = -(-len(completes) // count)
    return [batch_request(completes[i : i + size]) for i in range(0, len(completes), size)]


def single_request(complete: CompleteGroup) -> dg.RunRequest:
    group = complete.group
    config = {"grouping_key": group.grouping_key, "grouping_method": complete.method}
    return dg.RunRequest(
        run_key=complete.run_key,
        job_name=jobs.register_submission_from_group_job.name,
        run_config={"ops": {"register_submission_from_group": {"config": config}}},
        tags={
            SUBMITTER_TAG: tag_value(group.submitter_id),
            jobs.GROUP_TAG: group_id(group.grouping_key),
            jobs.DROP_TAG: jobs.drop_tag(complete.run_key),
            METHOD_TAG: complete.method,
        },
    )


def batch_request(completes: list[CompleteGroup]) -> dg.RunRequest:
    groups = [{"grouping_key": c.group.grouping_key, "grouping_method": c.method} for c in completes]
    key = batch_key(completes)
    tags = {BATCH_TAG: key}
    for c in completes:
        group = group_id(c.group.grouping_key)
        tags[jobs.per_group(jobs.DROP_TAG, group)] = jobs.drop_tag(c.run_key)
        tags[jobs.per_group(jobs.GROUP_TAG, group)] = group
    for name, values in (
        (SUBMITTER_TAG, {c.group.submitter_id for c in completes}),
        (METHOD_TAG, {c.method for c in completes}),
    ):
        if len(values) == 1:
            tags[name] = tag_value(values.pop())
    return dg.RunRequest(
        run_key=key,
        job_name=jobs.register_submissions_from_groups_job.name,
        run_config={"ops": {"register_submissions_from_groups": {"config": {"groups": groups}}}},
        tags=tags,
    )


def batch_key(completes: list[CompleteGroup]) -> str:
    """The batch's identity + version: its drops' run keys, in any order."""
    digest = hashlib.sha256("\n".join(sorted(c.run_key for c in completes)).encode()).hexdigest()[:16]
    return f"batch-{len(completes)}-{digest}"


# --- what intake_sweeper needs to take up a drop of a failed batch run -----------------------------


def drops_of(tags: Mapping[str, str]) -> dict[str, str]:
    """A registration run's drops, drop tag -> group id: a single-group run's one, or a batch's."""
    if jobs.DROP_TAG in tags:
        return {tags[jobs.DROP_TAG]: tags.get(jobs.GROUP_TAG, "")}
    prefix = jobs.per_group(jobs.DROP_TAG, "")
    return {value: key.removeprefix(prefix) for key, value in tags.items() if key.startswith(prefix)}


def single_group_run(tags: Mapping[str, str], run_config: Mapping, group: str) -> tuple[dict, dict[str, str]]:
    """For one group of a batch run: the single-group job's run config and tags, as the sensor
    would have asked for it alone (the sweeper asks again for one drop, not for its whole batch)."""
    groups = run_config["ops"]["register_submissions_from_groups"]["config"]["groups"]
    config = next(g for g in groups if group_id(g["grouping_key"]) == group)
    kept = {k: v for k, v in tags.items() if k in (SUBMITTER_TAG, METHOD_TAG)}
    single_tags = {**kept, jobs.GROUP_TAG: group, jobs.DROP_TAG: tags[jobs.per_group(jobs.DROP_TAG, group)]}
    return {"ops": {"register_submission_from_group": {"config": dict(config)}}}, single_tags
