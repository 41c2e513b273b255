"""The seam between the service and the engines: `EngineClient` (protocol.py), one in-process
engine (local.py)."""
