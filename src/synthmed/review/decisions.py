"""Approve or reject synthetic samples; a rejection asks the generator for a replacement.

The latest decision counts: it sets ``Sample.review_state``. A rejection opens a RegenerationRequest (same
conditions, new seed) that ``synthmed generate --from-requests`` fulfils; approving a sample again drops
its still-open request.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import DECISIONS, Decision, RegenerationRequest, Sample
from synthmed.errors import SynthmedError

MAX_REASON = 2000


def decide(session: Session, sample_id: int, user_id: int, decision: str, reason: str = "") -> Decision:
    """Record an admin's decision on a synthetic sample; a reject needs a reason."""
    if decision not in DECISIONS:
        raise SynthmedError(f"must be one of {', '.join(DECISIONS)}, got {decision!r}", field="decision")
    reason = reason.strip()
    if decision == "reject" and not reason:
        raise SynthmedError("say why the sample is rejected (the generator's users read it)", field="reason")
    if len(reason) > MAX_REASON:
        raise SynthmedError(f"{len(reason)} characters; keep it under {MAX_REASON}", field="reason")
    sample = session.get(Sample, sample_id)
    if sample is None:
        raise SynthmedError(f"no sample {sample_id}", field="sample_id")
    if sample.origin != "synthetic":
        raise SynthmedError("only synthetic samples are approved or rejected", field="sample_id")
    if decision == "approve" and sample.likely_copy:
        raise SynthmedError(
            f"sample {sample.id} is a likely copy of the training image {sample.copy_check['nearest_train']} "
            "(see its provenance page), so it cannot be approved; reject it",
            field="decision",
        )
    row = Decision(sample_id=sample.id, user_id=user_id, decision=decision, reason=reason)
    session.add(row)
    session.flush()
    sample.review_state = "approved" if decision == "approve" else "rejected"
    is_open = (RegenerationRequest.sample_id == sample.id, RegenerationRequest.status == "open")
    if decision == "approve":
        session.execute(delete(RegenerationRequest).where(*is_open))
    elif session.scalar(select(RegenerationRequest.id).where(*is_open)) is None:
        session.add(RegenerationRequest(sample_id=sample.id, decision_id=row.id))
    session.flush()
    return row
