"""The web app (FastAPI, server-rendered pages): login, reader studies, review, statistics."""
