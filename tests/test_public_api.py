from __future__ import annotations

import subprocess
import sys
import types

import watchroutes
import watchroutes.adapters
import watchroutes.testing


def test_all_is_honest() -> None:
    for module in (watchroutes, watchroutes.testing, watchroutes.adapters):
        exported = set(module.__all__)
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        } - {"annotations"}
        assert exported == public, (exported ^ public, module.__name__)
        assert list(module.__all__) == sorted(module.__all__)
        for name in exported:
            assert getattr(module, name) is not None


def test_import_watchroutes_imports_no_framework() -> None:
    code = (
        "import sys, watchroutes, watchroutes.testing, watchroutes.adapters\n"
        "bad = [m for m in ('starlette', 'fastapi', 'flask', 'django', 'aiohttp', 'uvicorn',"
        " 'redis', 'nats', 'psycopg', 'pytest') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_public_names_report_their_public_module() -> None:
    for module in (watchroutes, watchroutes.testing, watchroutes.adapters):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type):
                assert value.__module__ in (module.__name__, "watchroutes"), (name, value)
