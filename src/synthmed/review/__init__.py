"""Review: reader studies (visual Turing test, Likert ratings), approve/reject decisions, statistics."""
