"""Composition root: merges each area's definitions and binds the shared resources. No logic."""

import dagster as dg

from orchestrator.defs import resources
from orchestrator.defs.bootstrap import definitions as bootstrap
from orchestrator.defs.intake import definitions as intake

defs = dg.Definitions.merge(
    bootstrap.defs,
    intake.defs,
    dg.Definitions(resources={"launcher": resources.WorkerLauncher()}),
)
