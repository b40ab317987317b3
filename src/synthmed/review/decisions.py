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


def check_decision(session: Session, sample_id: int, decision: str, reason: str = "") -> tuple[Sample, str]:
    """The sample and the stripped reason if the decision may be made, else SynthmedError saying why (a
    batch checks every sample first, so that it decides all of them or none)."""
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
    return sample, reason


def decide(session: Session, sample_id: int, user_id: int, decision: str, reason: str = "") -> Decision:
    """Record an admin's decision on a synthetic sample; a reject needs a reason."""
    sample, reason = check_decision(session, sample_id, decision, reason)
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


def undo_last(session: Session, sample_id: int, user_id: int) -> str:
    """Take back this admin's latest decision on a sample (it must still be the sample's latest); the state
    and the regeneration request become what the decision before it left. Returns the new review state."""
    latest = _latest(session, sample_id)
    if latest is None or latest.user_id != user_id:
        raise SynthmedError("there is no decision of yours to undo on this sample", field="sample_id")
    request = session.scalar(select(RegenerationRequest).where(RegenerationRequest.decision_id == latest.id))
    if request is not None and request.status != "open":
        raise SynthmedError("a replacement was generated already: decide again instead", field="sample_id")
    if request is not None:
        session.delete(request)
        session.flush()  # the request names the decision: it goes first
    session.delete(latest)
    session.flush()
    previous = _latest(session, sample_id)
    sample = session.get_one(Sample, sample_id)
    sample.review_state = {"approve": "approved", "reject": "rejected"}.get(
        previous.decision if previous else "", "pending"
    )
    if previous is not None and previous.decision == "reject":
        _ask_again(session, previous)
    session.flush()
    return sample.review_state


def _latest(session: Session, sample_id: int) -> Decision | None:
    return session.scalar(
        select(Decision).where(Decision.sample_id == sample_id).order_by(Decision.id.desc()).limit(1)
    )


def _ask_again(session: Session, reject: Decision) -> None:
    """A reject that an approve had taken back asks for its replacement again (unless one was made)."""
    if (
        session.scalar(select(RegenerationRequest.id).where(RegenerationRequest.decision_id == reject.id))
        is None
    ):
        session.add(RegenerationRequest(sample_id=reject.sample_id, decision_id=reject.id))


def latest_decisions(session: Session, sample_ids: list[int]) -> dict[int, Decision]:
    """Each sample's latest decision (its reason shown beside a rejected sample)."""
    rows = session.scalars(
        select(Decision).where(Decision.sample_id.in_(sample_ids)).order_by(Decision.id)
    ).all()
    return {row.sample_id: row for row in rows}  # later rows overwrite earlier ones
