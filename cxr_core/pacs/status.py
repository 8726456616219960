"""What the node has done, for people: ``python -m training.node --status`` and the app's node panel."""

from __future__ import annotations

import datetime as dt

from cxr_core.pacs.state import ANALYSED, RECEIVED, SENT, InstanceRecord, NodeState


def describe(record: InstanceRecord) -> str:
    """One instance's state in words: ``received``, ``analysed``, ``sent``, or ``failed (retrying: ...)``."""
    if record.failing:
        due = dt.datetime.fromtimestamp(record.next_attempt_at or 0).strftime("%H:%M:%S")
        return f"failed {record.attempts}x, retry at {due}: {record.last_error}"
    return record.state


def _time(value: float | None) -> str | None:
    return None if value is None else dt.datetime.fromtimestamp(value).isoformat(timespec="seconds")


def status_summary(state: NodeState, *, recent: int = 20) -> dict:
    """Counts per state and the latest instances, as plain data (JSON-ready).

    Args:
        state: the node's state database.
        recent: how many of the latest instances to list.
    """
    rows = []
    for r in state.recent(recent):
        rows.append({"sop_instance_uid": r.sop_instance_uid, "study_instance_uid": r.study_instance_uid,
                     "patient_id": r.patient_id, "accession_number": r.accession_number, "modality": r.modality,
                     "from": r.calling_ae, "state": r.state, "status": describe(r), "triage": r.triage,
                     "flagged": r.flagged.split("|") if r.flagged else [], "reason": r.reason,
                     "received_at": _time(r.received_at), "analysed_at": _time(r.analysed_at),
                     "sent_at": _time(r.sent_at), "attempts": r.attempts, "last_error": r.last_error})
    return {"database": str(state.path), "counts": state.counts(), "recent": rows}


def status_lines(state: NodeState, *, recent: int = 20) -> list[str]:
    """The same as :func:`status_summary`, as lines for a terminal."""
    summary = status_summary(state, recent=recent)
    c = summary["counts"]
    lines = [f"state database: {summary['database']}",
             f"{c[RECEIVED]} waiting for analysis, {c[ANALYSED]} waiting to be sent ({c['failing']} after a failed "
             f"send, retried), {c[SENT]} sent"]
    if summary["recent"]:
        lines.append(f"latest {len(summary['recent'])}, newest first:")
    for row in summary["recent"]:
        flags = ", ".join(row["flagged"]) or "-"
        lines.append(f"  {row['received_at']}  {row['sop_instance_uid']}  from {row['from'] or '?'}  "
                     f"{row['status']}  triage: {row['triage'] or '-'}  flagged: {flags}")
    return lines
