import dagster as dg

from orchestrator.defs.bootstrap import assets

defs = dg.Definitions(assets=dg.load_assets_from_modules([assets]))
