import dagster as dg

from orchestrator.defs.resources import WorkerLauncher


@dg.asset(
    group_name="bootstrap",
    kinds={"python", "s3"},
    description="Heartbeat: one `phase0_ok` row in bootstrap_heartbeat and bootstrap/hello.txt in the bucket.",
)
def bootstrap_heartbeat_asset(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
    return launcher.materialize(context=context, worker="heartbeat")
