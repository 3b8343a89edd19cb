"""Real producer processes for the decoder tests: FastStream releases, each in a venv of its own, and a
Node.js service writing with ioredis.

The venvs are created on first use under ``CRS_PRODUCER_VENVS`` (default
``~/.cache/celery-redis-stream/producers``, outside the repository) and
reused while their requirement is unchanged, so reruns start at once. A
file lock keeps parallel test processes (xdist) from building one venv twice.
When a venv cannot be made (no package index, no ``venv`` module) the test
fails saying why: these tests exist to run the real FastStream, never a copy
of its bytes. ioredis is installed the same way, with the machine's npm, into
``node-ioredis`` beside the venvs; without Node.js and npm the tests that need
it fail saying so.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: FastStream releases the tests publish with: the last 0.5 (JSON envelope) and the newest 0.7 (binary format).
FASTSTREAM = {"0.5": "faststream[redis]==0.5.48", "0.7": "faststream[redis]>=0.7,<0.8"}
SCRIPT = Path(__file__).with_name("faststream_producer.py")
#: The ioredis release the Node producer writes with.
IOREDIS = "ioredis@5"
NODE_SCRIPT = Path(__file__).with_name("ioredis_producer.js")


def venv_root() -> Path:
    default = Path.home() / ".cache" / "celery-redis-stream" / "producers"
    return Path(os.environ.get("CRS_PRODUCER_VENVS") or default)


def faststream_python(release: str) -> Path:
    """The python of a venv holding FastStream ``release`` ("0.5" or "0.7") and pydantic, made once."""
    requirement = FASTSTREAM[release]
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"faststream-{release}"
    python = venv / "bin" / "python"
    marker = venv / ".requirement"
    with open(root / f"faststream-{release}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == requirement and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement, "pydantic"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
                pytest.fail(
                    f"cannot create the FastStream {release} producer venv in {venv} "
                    f"({' '.join(step[:4])} ... exited {done.returncode}): {' / '.join(tail)}",
                    pytrace=False,
                )
        marker.write_text(requirement)
    return python


def publish_faststream(release: str, url: str, stream: str, messages: list[dict[str, Any]]) -> str:
    """Run a FastStream ``release`` producer process publishing ``messages`` to ``stream``; its FastStream version."""
    python = faststream_python(release)
    done = subprocess.run(
        [str(python), "-W", "ignore::DeprecationWarning", str(SCRIPT), url, stream, json.dumps(messages)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
    )
    assert done.returncode == 0, f"FastStream {release} producer failed: {done.stderr[-2000:]}"
    return done.stdout.strip().splitlines()[-1]


def ioredis_modules() -> Path:
    """A ``node_modules`` folder holding ioredis, installed once with npm."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: the Node.js producer tests need Node.js and npm", pytrace=False)
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "node-ioredis"
    marker = folder / ".requirement"
    with open(root / "node-ioredis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == IOREDIS and (folder / "node_modules" / "ioredis").is_dir():
            return folder / "node_modules"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        step = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--prefix", str(folder), IOREDIS]
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            pytest.fail(f"cannot install {IOREDIS} in {folder} (npm exited {done.returncode}): {' / '.join(tail)}",
                        pytrace=False)  # fmt: skip
        marker.write_text(IOREDIS)
    return folder / "node_modules"


def run_node(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``node *args`` with ioredis importable (``require("ioredis")``)."""
    env = {**os.environ, "NODE_PATH": str(ioredis_modules())}
    return subprocess.run(["node", *args], capture_output=True, text=True, timeout=120, check=False, env=env)


def publish_ioredis(url: str, entries: list[tuple[str, list[str]]]) -> str:
    """Run a Node.js process that XADDs each ``(stream, [field, value, ...])`` with ioredis; its ioredis version."""
    done = run_node([str(NODE_SCRIPT), url, json.dumps(entries)])
    assert done.returncode == 0, f"the ioredis producer failed: {done.stderr[-2000:]}"
    return done.stdout.strip().splitlines()[-1]
