"""The fleet's commit acknowledgements to devices: after an ingest group's transaction committed, each device whose
batches were in it gets one `fleet.protocol.Ack` on `{prefix}/dev/{device}/acks` (QoS 1, not retained) naming the
record ids now stored (duplicates included: they are stored) and those validation refused. A device deletes an
outbox row only on this ack, not on the broker's PUBACK: Mosquitto acknowledges a publish before it has written it,
so a broker killed in that window would otherwise lose records the device already deleted (docs/agent.md)."""

from __future__ import annotations

from fleet.ingest import Prepared, record_ids
from fleet.protocol import ACK_MAX_IDS, Ack, Topics, encode


def acks_of(prepared: Prepared, topics: Topics) -> list[tuple[str, bytes]]:
    """(topic, payload) of the acks for a written group: only messages still well formed after the write (a
    message whose insert failed is not acknowledged, so its device sends it again)."""
    stored: dict[str, list[str]] = {}
    refused: dict[str, list[str]] = {}
    for i, topic, _kind, recs in prepared.pending:
        if prepared.ok[i]:
            stored.setdefault(topic.split("/")[-2], []).extend(record_ids(recs))
    for i, topic, ids in prepared.refused_ids:
        if prepared.ok[i]:
            refused.setdefault(topic.split("/")[-2], []).extend(ids)
    out: list[tuple[str, bytes]] = []
    for device in {**stored, **refused}:
        s, r = stored.get(device, []), refused.get(device, [])
        for n in range(0, max(len(s), len(r)), ACK_MAX_IDS):
            ack = Ack(device=device, stored=s[n:n + ACK_MAX_IDS], refused=r[n:n + ACK_MAX_IDS])
            out.append((topics.device(device, "acks"), encode(ack)))
    return out
