"""Admission webhooks: pure decisions (decisions/) behind a FastAPI app served over HTTPS."""
