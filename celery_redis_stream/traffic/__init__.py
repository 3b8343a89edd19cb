"""Traffic control: the fleet-wide rate limit of a stream (limit.py) and business-key deduplication (dedupe.py)."""
