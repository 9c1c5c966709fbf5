#!/usr/bin/env python3
"""Writes a Docker-mode .env from .env.example with every REQUIRED (empty) secret set to a fresh
random value (letters and digits: safe in a database URL). Never overwrites an existing file.

Usage: scripts/new_env.py [TARGET] [TEMPLATE]     (defaults: .env, .env.example)
"""

import os
import secrets
import sys
from pathlib import Path


def filled(template: str) -> str:
    lines = []
    for line in template.splitlines():
        name, sep, value = line.partition("=")
        if sep and not value and not line.startswith("#"):
            line = f"{name}={secrets.token_hex(16)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else ".env")
    template = Path(argv[2] if len(argv) > 2 else Path(__file__).resolve().parents[1] / ".env.example")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"{target} exists; not overwritten (remove it first to start afresh)", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as out:
        out.write(filled(template.read_text()))
    print(f"wrote {target} (mode 600) with fresh random secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
