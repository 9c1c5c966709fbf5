"""A failed UI step leaves a screenshot of the page as it was (.local/browser/FAILED-<test>.png)."""

from collections.abc import Iterator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call" and report.failed and "ui" in getattr(item, "funcargs", {}):
        item.funcargs["ui"].shot(f"FAILED-{item.name}")
    return report
