"""Fleet commands a device obeys: roll back now, re-check the active release, report, upload sample images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from edge.agent.cache import release_key
from fleet.protocol import (
    ActivationSource,
    ClearCommand,
    Command,
    RecheckCommand,
    RollbackCommand,
    UploadSamplesCommand,
)
from runtime.fsio import sha256_file

if TYPE_CHECKING:
    from edge.agent.runtime import Agent


def run_command(agent: Agent, cmd: Command) -> None:
    agent._event("command", {"id": cmd.id, "command": cmd.command, "args": cmd.args.model_dump(mode="json")})
    if isinstance(cmd, RollbackCommand):
        rollback(agent, cmd)
    elif isinstance(cmd, ClearCommand):
        clear(agent, cmd)
    elif isinstance(cmd, RecheckCommand):
        committed = agent.machine.record.committed
        if committed is None:
            agent._event("command.rejected", {"id": cmd.id, "reason": "no release to re-check"})
        else:
            agent.machine.apply(committed, source=ActivationSource.RECHECK)
    elif isinstance(cmd, UploadSamplesCommand):
        upload_samples(agent, cmd)
    agent.report()  # every command, `report` included, ends with the reported state


def clear(agent: Agent, cmd: ClearCommand) -> None:
    """The fleet cleared our desired state: it has no earlier release for us; keep running what we run."""
    m = agent.machine
    current = release_key(m.record.committed) if m.record.committed else None
    m.mark_handled(cmd.args.revision)
    agent._event("command.rejected", {"id": cmd.id, "reason": "the fleet has no earlier release for this "
                                      f"device; staying on {current}"})


def rollback(agent: Agent, cmd: RollbackCommand) -> None:
    """Return to the release committed before the current one, from the cache (no download). `args.release`
    may name a cached release key instead."""
    m = agent.machine
    current = release_key(m.record.committed) if m.record.committed else None
    wanted = cmd.args.release
    entries = [e for e in m.cache.index().releases if e.ready and e.key != current]
    if wanted:
        entries = [e for e in entries if e.key == wanted]
    if not entries:
        agent._event("command.rejected", {"id": cmd.id, "reason": f"no cached release to roll back to "
                                          f"(current {current}, wanted {wanted or 'previous'})"})
        return
    m.apply(entries[0].desired, source=ActivationSource.ROLLBACK)


def upload_samples(agent: Agent, cmd: UploadSamplesCommand) -> None:
    """POST up to `args.limit` recent images to `args.url` (multipart), or list them in an event if no URL."""
    images = agent.host.recent_images(cmd.args.limit)
    listed = [{"name": p.name, "sha256": sha256_file(p), "size": p.stat().st_size} for p in images if p.is_file()]
    url = cmd.args.url
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
