import dagster as dg

from orchestrator.defs.intake import jobs

defs = dg.Definitions(jobs=[jobs.register_submission_from_group_job])
