import dagster as dg

from orchestrator.defs.intake import assets, checks, jobs, sensors

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([assets]), assets.inbox, checks.raw_zone],
    asset_checks=[checks.raw_copies_match_manifests],
    jobs=[jobs.register_submission_from_group_job],
    sensors=[sensors.inbox_discovery_sensor],
)
