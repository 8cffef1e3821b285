"""What every part of the backend shares: HTTP error types, atomic file writes, a byte-bounded LRU, the Redis client."""
