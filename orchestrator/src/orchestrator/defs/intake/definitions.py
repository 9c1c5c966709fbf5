import dagster as dg

from orchestrator.defs.intake import assets, jobs, sensors

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    jobs=[jobs.register_submission_from_group_job],
    sensors=[sensors.inbox_discovery_sensor],
)
