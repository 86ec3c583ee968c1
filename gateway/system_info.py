"""What machine this is and what the model server runs on, for `/api/system/info`.

The model server lives in its own venv, so its package versions are read by asking that venv's
Python once (a subprocess), then cached for the gateway's lifetime.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

BACKEND_PACKAGES = ("mlx", "mlx-lm", "mlx-openai-server", "mlx-vlm", "mlx-embeddings")
_PROBE = (
    "import json, importlib.metadata as m\n"
    "out = {{}}\n"
    "for name in {names!r}:\n"
    "    try: out[name] = m.version(name)\n"
    "    except m.PackageNotFoundError: out[name] = None\n"
    "print(json.dumps(out))\n"
)


def chip_name() -> str:
    """The CPU or Apple chip, as the OS names it."""
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_facts() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": chip_name(),
        "cpu_count": psutil.cpu_count(logical=True),
        "total_memory_bytes": memory.total,
        "python": platform.python_version(),
        "gateway_version": _version("mlx-manager"),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


async def backend_versions(executable: str | None) -> dict[str, str | None]:
    """Package versions inside the model server's venv (the python beside its executable)."""
    empty: dict[str, str | None] = dict.fromkeys(BACKEND_PACKAGES)
    if executable is None:
        return empty
    python = Path(executable).with_name("python")
    if not python.exists():
        return empty
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            "-c",
            _PROBE.format(names=BACKEND_PACKAGES),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        found: dict[str, str | None] = json.loads(out)
    except (OSError, TimeoutError, json.JSONDecodeError):
        return empty
    return {**empty, **found}
