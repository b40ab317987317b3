"""The job queue: generation, evaluation and training started from the dashboard, run by a worker."""
