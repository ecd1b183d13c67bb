"""The service pipeline: `app.build(settings)` wires the parts; the runner polls, batches and commits; the
pipeline decodes, writes and dead-letters; batcher, offsets, breaker, retry, rate limit, adaptive sizing."""
