"""Operations: Prometheus metrics, logs (text or JSON, one access line per call) and optional
OpenTelemetry traces. Fed by the transports' and the service's observer hooks and the engine's
stats seam; nothing below the transports imports this package."""
