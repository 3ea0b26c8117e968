"""Fleet commands a device obeys: roll back now, re-check the active release, report, upload sample images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from edge.agent.cache import release_key
from fleet.protocol import Command
from runtime.fsio import sha256_file

if TYPE_CHECKING:
    from edge.agent.runtime import Agent


def run_command(agent: Agent, cmd: Command) -> None:
    agent._event("command", {"id": cmd.id, "command": cmd.command, "args": cmd.args})
    if cmd.command == "rollback":
        rollback(agent, cmd)
    elif cmd.command == "recheck":
        committed = agent.machine.record.committed
        if committed is None:
            agent._event("command.rejected", {"id": cmd.id, "reason": "no release to re-check"})
        else:
            agent.machine.apply(committed, source="cmd:recheck")
    elif cmd.command == "upload_samples":
        upload_samples(agent, cmd)
    agent.report()


def rollback(agent: Agent, cmd: Command) -> None:
    """Return to the release committed before the current one, from the cache (no download). `args.release`
    may name a cached release key instead."""
    m = agent.machine
    current = release_key(m.record.committed) if m.record.committed else None
    wanted = cmd.args.get("release")
    if "to" in cmd.args and cmd.args["to"] is None:
        # the fleet cleared our desired state: it has no earlier release for us; keep running what we run
        rev = cmd.args.get("revision")
        if isinstance(rev, int):
            m.mark_handled(rev)
        agent._event("command.rejected", {"id": cmd.id, "reason": "the fleet has no earlier release for this "
                                          f"device; staying on {current}"})
        return
    entries = [e for e in m.cache.index().releases if e.ready and e.key != current]
    if wanted:
        entries = [e for e in entries if e.key == wanted]
    if not entries:
        agent._event("command.rejected", {"id": cmd.id, "reason": f"no cached release to roll back to "
                                          f"(current {current}, wanted {wanted or 'previous'})"})
        return
    m.apply(entries[0].desired, source="cmd:rollback")


def upload_samples(agent: Agent, cmd: Command) -> None:
    """POST up to `args.limit` recent images to `args.url` (multipart), or list them in an event if no URL."""
    limit = int(cmd.args.get("limit", 8))
    images = agent.host.recent_images(limit)
    listed = [{"name": p.name, "sha256": sha256_file(p), "size": p.stat().st_size} for p in images if p.is_file()]
    url = cmd.args.get("url")
    sent, errors = 0, []
    if url:
        headers = {"Authorization": f"Bearer {agent.config.http_token}"} if agent.config.http_token else {}
        with httpx.Client(timeout=agent.config.download_timeout_s) as client:
            for p in images:
                try:
                    with open(p, "rb") as fh:
                        resp = client.post(url, files={"file": (p.name, fh)}, headers=headers,
                                           data={"device": agent.device_id, "command": cmd.id})
                    resp.raise_for_status()
                    sent += 1
                except (OSError, httpx.HTTPError) as err:
                    errors.append(f"{p.name}: {err}")
    agent._event("samples", {"id": cmd.id, "images": listed, "uploaded": sent, "errors": errors, "url": url})
