"""Everything between routing a request and its first output: attempts, retries, hedging,
timeouts, circuits, the watchdog and per-deployment stats."""
