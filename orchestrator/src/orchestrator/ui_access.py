"""Docker mode's UI access: the htpasswd files the authenticating proxy (ui_proxy) checks.

`python -m orchestrator.ui_access render DIR` writes `operator.htpasswd` (the UI that can launch)
and `viewer.htpasswd` (the read-only UI), one user each, from UI_OPERATOR_USER/_PASSWORD and
UI_VIEWER_USER/_PASSWORD. Only SHA-512 crypt hashes are written and nothing secret is printed.

Hashing uses the standard library's `crypt` (the C library's crypt(3), which nginx's auth_basic
checks with as well). It is deprecated since Python 3.11 and gone in 3.13: the Dagster image pins
Python 3.11; a later one needs another SHA-512-crypt or bcrypt implementation here.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

UIS = ("operator", "viewer")


class UiAccessError(ValueError):
    pass


@dataclass(frozen=True)
class Login:
    user: str
    password: str = field(repr=False)


def login_for(ui: str, env: dict[str, str]) -> Login:
    prefix = f"UI_{ui.upper()}"
    user = env.get(f"{prefix}_USER") or ui
    password = env.get(f"{prefix}_PASSWORD", "")
    if not password:
        raise UiAccessError(f"{prefix}_PASSWORD is not set (make env writes a random one)")
    if ":" in user or "\n" in user:
        raise UiAccessError(f"{prefix}_USER must not contain ':' or a newline")
    return Login(user, password)


def htpasswd_line(login: Login) -> str:
    return f"{login.user}:{crypt.crypt(login.password, crypt.mksalt(crypt.METHOD_SHA512))}\n"


def render(directory: Path, env: dict[str, str]) -> list[Path]:
    logins = {ui: login_for(ui, env) for ui in UIS}
    if logins["operator"].user == logins["viewer"].user:
        raise UiAccessError("UI_OPERATOR_USER and UI_VIEWER_USER must differ")
    written = []
    for ui, login in logins.items():
        path = directory / f"{ui}.htpasswd"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(htpasswd_line(login))
        # Hashes only; readable by the proxy's unprivileged worker processes, the volume's only reader.
        tmp.chmod(0o644)
        tmp.replace(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.ui_access", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["render"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        paths = render(args.directory, dict(os.environ))
    except UiAccessError as exc:
        print(f"ui_access: {exc}", file=sys.stderr)
        return 1
    print(f"ui_access: wrote {', '.join(p.name for p in paths)} (hashes only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
