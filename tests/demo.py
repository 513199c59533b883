"""`scripts/demo`: a whole fleet on this machine, built on the test harness (harness/fleetlab.py).

A relay, a coordinator and three agents (each with its own chroot Nix store; one reaches the
coordinator only through the relay) run as real processes on 127.0.0.1. Two fake NixOS
system generations are built, signed into a binary cache served over HTTP, and pushed with
`fleetctl push --wait`; `fleetctl status` is shown after each. Then the fleet keeps running
for you to try fleetctl against it (the commands are printed) until Ctrl-C, or stops at once
with --once. Everything lives in one temporary directory, removed at the end (--keep keeps
it).

    python -m tests.demo [--once] [--keep] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.fleetlab import FleetctlResult, FleetLab, LabError
from harness.nixlab import Builder, fill_cache, serve_directory

TAG = "demo"
DEVICES = ("kiosk-1", "kiosk-2", "router")
RELAY_ONLY = "router"


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def fleetctl_command(lab: FleetLab) -> str:
    """How a user runs fleetctl from this checkout."""
    installed = Path(sys.executable).parent / "fleetctl"
    if installed.exists():
        return str(installed)
    return f"PYTHONPATH={shlex.quote(os.getcwd())} {sys.executable} -m fleet.cli.fleetctl"


async def show(lab: FleetLab, *args: str) -> FleetctlResult:
    print(f"$ fleetctl {' '.join(args)}", flush=True)
    result = await lab.fleetctl(*args, echo=True, timeout=180)
    if result.code != 0:
        raise LabError(f"fleetctl {' '.join(args)} failed (exit {result.code}):\n{result.err}")
    return result


async def demo(root: Path, *, once: bool) -> None:
    if not shutil.which("nix-build"):
        raise LabError("Nix is not installed: run scripts/demo as root (it installs nix-bin)")
    say(f"working in {root}")
    say("building two system generations (fake NixOS closures) in a chroot Nix store")
    builder = Builder(root / "builder")
    systems = [builder.build("demo-1"), builder.build("demo-2")]
    for system in systems:
        print(f"    {system.path}")
    say(f"signing them with {builder.key.name} into a binary cache")
    await fill_cache(builder, root / "binary-cache", *systems)
    with serve_directory(root / "binary-cache") as cache_url:
        print(f"    served at {cache_url}")
        lab = FleetLab(root / "fleet", substituter=cache_url, trusted_key=builder.key.public_key)
        try:
            await run_fleet(lab, [s.path for s in systems], once=once)
        finally:
            say("stopping the fleet")
            await lab.close()
            say("stopped")


async def run_fleet(lab: FleetLab, paths: list[str], *, once: bool) -> None:
    say("starting a relay (TLS) and the coordinator")
    await lab.start()
    print(f"    relay        {lab.relay_url}")
    print(f"    coordinator  {lab.coordinator_addr}")
    agents = [lab.add_agent(name, relay_only=name == RELAY_ONLY, tags=(TAG,)) for name in DEVICES]
    say(
        f"starting three agents with their own Nix stores ({RELAY_ONLY} reaches the "
        f"coordinator only through the relay), registered with tag {TAG}"
    )
    await lab.launch(*agents, tags=(TAG,))
    for path in paths:
        say(f"pushing {path.rpartition('-')[2]}")
        await show(
            lab, "push", path, "--to", f"tag:{TAG}", "--wait", "--timeout", "120",
            "--cache", lab.substituter, "--trusted-public-key", lab.trusted_key,
        )  # fmt: skip
        await show(lab, "status")
    if once:
        return
    command = fleetctl_command(lab)
    say("the fleet is running; try fleetctl against it (Ctrl-C here stops everything):")
    print(
        f"    export FLEET_COORDINATOR={lab.coordinator_addr}\n"
        f"    export FLEET_KEY={lab.admin_key}\n"
        f"    {command} status --watch\n"
        f"    {command} push {paths[0]} --to tag:{TAG} --wait\n"
        f"    {command} devices list\n"
        f"    logs: {lab.logs}",
        flush=True,
    )
    await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels us


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        await demo(root, once=args.once)
        return 0
    except asyncio.CancelledError:
        return 0  # Ctrl-C: the fleet was stopped on the way out
    except LabError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            # Nix makes store files read-only; make them writable so they can be removed.
            subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept {root}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="stop after showing the pushes")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--dir", help="working directory (default: a new temporary one)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
