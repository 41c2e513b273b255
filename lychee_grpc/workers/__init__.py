"""Engine worker processes behind one `EngineClient` (engine/api.py): the pool (pool.py, each
request's `PoolJob` in pool_job.py), the routing of documents to workers (routing.py), the
worker's own loop (worker.py) and the messages on their pipes (ipc.py)."""
