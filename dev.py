#!/usr/bin/env python3
"""Set up and run watchroutes on a fresh machine with nothing but Python 3.11+.

    python3 dev.py demo [FRAMEWORK] [ARGS]  # the example app, in memory (prints the URL)
    python3 dev.py test [ARGS]              # the test suite (pytest ARGS)
    python3 dev.py setup                    # only (re)create the virtualenv in .venv

``demo`` serves the example app with FRAMEWORK (starlette, the default, fastapi, aiohttp,
flask or django) on http://127.0.0.1:8000; ARGS are the example's options (``--port 8001``,
``--seed 5``, see ``python3 dev.py demo --help``). The server replaces this process, so
Ctrl-C or a SIGTERM to it stops the server.

The first run creates ``.venv`` and installs the package with its extras and the test and
lint dependencies; later runs reuse it until ``pyproject.toml`` changes
(``WATCHROUTES_DEV_SETUP=0`` skips that check and uses ``.venv`` as it is).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".watchroutes-setup"
EXTRAS = "starlette,fastapi,aiohttp,flask,django,prometheus,otel,server,redis,nats,postgres,client"


def _digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def setup(force: bool = False) -> None:
    if not force and os.environ.get("WATCHROUTES_DEV_SETUP") == "0" and PYTHON.exists():
        return
    if not force and STAMP.exists() and STAMP.read_text() == _digest():
        return
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    print("installing watchroutes and its test dependencies into .venv ...", flush=True)
    subprocess.run([*pip, "--upgrade", "pip>=25.1"], check=True)
    subprocess.run([*pip, "-e", f".[{EXTRAS}]", "--group", "dev"], check=True, cwd=ROOT)
    STAMP.write_text(_digest())


def _replace_with(command: list[str]) -> int:
    """Run ``command`` in place of this process (so a signal to it reaches the server); where
    that is not possible (Windows), run it and wait, passing on Ctrl-C and termination."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    if os.name != "nt":
        os.execv(command[0], command)  # does not return
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "setup":
        setup(force=True)
        return 0
    if command == "demo":
        setup()
        framework, rest = "starlette", args
        if args and not args[0].startswith("-"):
            framework, rest = args[0], args[1:]
        # (the example's parser validates the framework; options given later win)
        demo = [str(PYTHON), "-m", "examples", framework, "--host", "127.0.0.1", "--port", "8000"]
        return _replace_with([*demo, *rest])
    if command == "test":
        setup()
        return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
