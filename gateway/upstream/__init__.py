"""Talking to upstreams: the lean HTTP client, SSE reading, and the mapping of upstream failures
to gateway errors."""
