"""What every worker shares: the two ways it runs (Pipes or standalone) and its error contract.

A worker is a core function `work(settings, params) -> metadata`. Launched by Dagster it reads
params from Pipes extras and reports metadata back; run by hand it reads params from the command
line and prints one JSON line. Either way a failure leaves one clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from workers.settings import Settings, SettingsError, load_settings

Metadata = dict[str, Any]
Work = Callable[[Settings, Mapping[str, Any]], Metadata]
# Reported when the work succeeded; the orchestrator fails a step whose worker never sent it.
RESULT_MARKER = "worker"


class WorkerError(RuntimeError):
    """An expected failure, with a message fit for an operator (no secrets, no file contents)."""


def describe_failure(exc: BaseException, settings: Settings | None) -> str:
    """One line naming the cause, never echoing credentials or connection strings."""
    if isinstance(exc, (WorkerError, SettingsError)):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        where = _db_location(settings)
        orig = getattr(exc, "orig", None) or exc
        cause = str(orig).strip().splitlines()[0]
        tried = "".join(f" ({note})" for note in getattr(orig, "__notes__", ()))  # connect_with_retry's count
        return f"metadata database error ({where}): {cause}{tried}"
    if isinstance(exc, EndpointConnectionError):
        return f"object store unreachable at {settings.endpoint_host if settings else '?'}"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = exc.operation_name
        return f"object store refused {op}: {err.get('Code', '?')} {err.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return f"object store error: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


def _db_location(settings: Settings | None) -> str:
    if settings is None:
        return "?"
    url = make_url(settings.metadata_db_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite {url.database}"
    return f"{url.get_backend_name()} at {url.host}:{url.port or 5432}/{url.database}"


def run_worker(
    name: str,
    work: Work,
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str = "",
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m workers.{name}", description=description)
    parser.add_argument(
        "--pipes",
        action="store_true",
        help="run under Dagster Pipes (the launcher passes this); parameters come from Pipes extras",
    )
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.pipes:
        return _run_under_pipes(name, work)
    params = {k: v for k, v in vars(args).items() if k != "pipes"}
    return _run_standalone(name, work, params)


def _run_standalone(name: str, work: Work, params: Mapping[str, Any]) -> int:
    settings = None
    try:
        settings = load_settings()
        result = work(settings, params)
    except Exception as exc:  # noqa: BLE001 - the contract is one line and a non-zero exit
        print(f"{name}: error: {describe_failure(exc, settings)}", file=sys.stderr)
        return 1
    print(json.dumps({RESULT_MARKER: name, **result}, sort_keys=True, default=str))
    return 0


def _run_under_pipes(name: str, work: Work) -> int:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    # Outside Dagster, open_dagster_pipes() hands back a mock that swallows every report.
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        print(
            f"{name}: error: --pipes given but no Dagster Pipes context in the environment; "
            "run without --pipes to use the worker by hand",
            file=sys.stderr,
        )
        return 2
    try:
        with open_dagster_pipes() as pipes:
            settings = None
            try:
                settings = load_settings()
                result = work(settings, pipes.extras)
            except Exception as exc:  # noqa: BLE001
                # Re-raised as WorkerError so Pipes carries the operator's line, not a traceback.
                raise WorkerError(describe_failure(exc, settings)) from None
            _report(pipes, {RESULT_MARKER: name, **result})
    except WorkerError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _report(pipes, metadata: Metadata) -> None:
    # An asset check's step targets no asset key: it gets the result as a message, as ops do.
    if pipes.is_asset_step and pipes.asset_keys:
        pipes.report_asset_materialization(metadata=metadata)
    else:
        pipes.report_custom_message(metadata)
