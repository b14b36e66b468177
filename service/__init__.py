"""The detection web service: FastAPI app, dynamic batching scheduler, metrics."""
