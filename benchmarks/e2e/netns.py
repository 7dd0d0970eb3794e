"""A private network namespace with a shaped loopback: the only traffic on its ``lo`` is ours.

The CLI re-executes itself under ``unshare -n`` (``reexec``); inside, ``shaped(rate)`` puts a
token-bucket qdisc on ``lo`` for the duration of a block, and
``ddp_hooks.launch.loopback_tx_bytes`` reads the namespace's own counter.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "THREEPC_E2E_NETNS"  # set in the re-executed child: "1" inside a namespace, "0" when none could be made
UNSHAPED = "unshaped"


def _missing() -> str | None:
    """Why no shaped namespace can be made here (None when it can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("unshare", "ip", "tc"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    done = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare -n failed: {done.stderr.strip()}"


def reexec(argv: list[str]) -> None:
    """Outside a namespace: run this CLI again under ``unshare -n`` and exit with its status.
    Without root, unshare or tc: say so in one line and return (the caller runs unshaped)."""
    if ENV in os.environ:
        return
    why = _missing()
    if why:
        print(f"e2e: no private network namespace ({why}): running unshaped on the host's loopback, "
              "without the lo byte counter", file=sys.stderr, flush=True)
        os.environ[ENV] = "0"
        return
    env = {**os.environ, ENV: "1"}
    sys.exit(subprocess.run(["unshare", "-n", sys.executable, "-m", "benchmarks.e2e", *argv], env=env).returncode)


def isolated() -> bool:
    """True inside the private namespace (lo counter and shaping available)."""
    return os.environ.get(ENV) == "1"


def bring_up_lo() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@contextmanager
def shaped(rate: str) -> Iterator[None]:
    """``tc qdisc ... tbf rate RATE burst 256kb latency 400ms`` on lo for the block (nothing for
    "unshaped"); the qdisc is removed afterwards."""
    if rate == UNSHAPED:
        yield
        return
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate, "burst", "256kb",
                    "latency", "400ms"], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=True)
