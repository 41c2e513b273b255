"""Small tools the engine shares: pinned host-to-device copies, a thread-safe LRU."""
