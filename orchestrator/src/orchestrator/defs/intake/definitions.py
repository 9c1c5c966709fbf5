import dagster as dg

from orchestrator.defs.intake import assets, checks, feeds, jobs, sensors, sweeper

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([assets]), assets.inbox, assets.submissions, checks.raw_zone],
    asset_checks=[checks.raw_copies_match_manifests, checks.no_stuck_drops, feeds.expected_deliveries],
    jobs=[
        jobs.register_submission_from_group_job,
        jobs.register_submissions_from_groups_job,
        jobs.stage_submission_job,
    ],
    sensors=[
        sensors.inbox_discovery_sensor,
        sweeper.intake_sweeper,
        feeds.feed_freshness_sensor,
    ],
)
