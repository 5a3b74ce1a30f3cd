"""The outbox on a real SQLite file: order, acknowledgement, bounds and what survives a restart."""

from __future__ import annotations

from edge.delivery import payload
from edge.delivery.outbox import Outbox, OutboxLimits


def test_messages_come_back_in_order_and_leave_only_when_acknowledged(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", payload.encode)
    seqs = [outbox.put("t/results", f"id{i}", {"n": i}) for i in range(5)]
    assert seqs == sorted(seqs)
    pending = outbox.pending(0, 10)
    assert [m.id for m in pending] == [f"id{i}" for i in range(5)]
    assert payload.encode({"n": 0}, seqs[0]) == pending[0].payload
    outbox.acknowledge(seqs[0])
    outbox.reject(seqs[1], "Not authorized")
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db", payload.encode)
    assert [m.seq for m in reopened.pending(0, 10)] == seqs[2:]
    stats = reopened.stats()
    assert (stats.depth, stats.rejected, stats.dropped) == (3, 1, 0)
    assert reopened.put("t/results", "id5", {"n": 5}) > seqs[-1]  # never reused


def test_the_oldest_messages_are_dropped_past_the_byte_and_age_bounds(tmp_path):
    now = [1000.0]
    outbox = Outbox(tmp_path / "outbox.db", payload.encode,
                    OutboxLimits(max_bytes=300, max_age_s=60), clock=lambda: now[0])
    for i in range(10):
        outbox.put("t/results", f"id{i}", {"text": "x" * 40, "n": i})
    kept = outbox.pending(0, 100)
    assert sum(len(m.payload) for m in kept) <= 300
    assert kept[-1].id == "id9" and kept[0].id != "id0"
    assert outbox.stats().dropped == 10 - len(kept)
    now[0] += 61
    outbox.put("t/results", "fresh", {"n": 99})
    assert [m.id for m in outbox.pending(0, 100)] == ["fresh"]
    assert outbox.stats().dropped == 10
