"""The metrics as Prometheus reads them: names, types, labels and values in the exposition text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from lychee_grpc.engine.stats import DeviceMemory, EngineStats
from lychee_grpc.engine.types import RequestStats, Timings, Usage
from lychee_grpc.observability.metrics import PrometheusObserver
from lychee_grpc.service.score_cache import ScoreCacheStats


def families(observer: PrometheusObserver) -> dict:
    return {f.name: f for f in text_string_to_metric_families(observer.exposition().decode())}


def sample(fams: dict, family: str, name: str, **labels) -> float:
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name}{labels}")


def stats(**overrides) -> EngineStats:
    base = dict(device="cuda:0", queue_documents=4, queue_tokens=900, preparing_requests=1, documents_scored=42,
                documents_dropped={"cancelled": 2, "deadline": 1}, batches=5, batch_seconds=0.5, oom_splits=1,
                oom_retries=3, oom_refusals=2,
                prefix_tokens_saved=700, image_cache_hits=3, image_cache_misses=9, image_cache_bytes=1024,
                image_cache_capacity_bytes=4096,
                gpu_memory=(DeviceMemory("cuda:0", 1000, 2000), DeviceMemory("cuda:1", 10, 20)))
    base.update(overrides)
    return EngineStats(**base)


def test_request_counts_are_labelled_by_method_transport_and_code():
    m = PrometheusObserver()
    m.request_done("grpc", "Rerank", "OK", 0.012, "r1", "ipv4:1.2.3.4:5")
    m.request_done("grpc", "Rerank", "OK", 0.020, "r2", "")
    m.request_done("http", "Rerank", "RESOURCE_EXHAUSTED", 0.001, "r3", "")
    fams = families(m)
    assert fams["lychee_requests"].type == "counter"
    assert sample(fams, "lychee_requests", "lychee_requests_total", method="Rerank", transport="grpc", code="OK") == 2
    assert sample(fams, "lychee_requests", "lychee_requests_total", transport="http", code="RESOURCE_EXHAUSTED") == 1
    h = "lychee_request_duration_seconds"
    assert fams[h].type == "histogram"
    assert sample(fams, h, h + "_count", method="Rerank", transport="grpc") == 2
    assert sample(fams, h, h + "_bucket", method="Rerank", transport="grpc", le="0.005") == 0
    assert sample(fams, h, h + "_bucket", method="Rerank", transport="grpc", le="0.025") == 2
    assert sample(fams, h, h + "_bucket", method="Rerank", transport="grpc", le="30.0") == 2


def test_scored_requests_record_documents_tokens_preprocess_time_and_truncations():
    m = PrometheusObserver()
    m.request_finished("Rerank", 7, RequestStats(Usage(prompt_tokens=300), Timings(preprocess_ms=8.0)), 2)
    fams = families(m)
    assert sample(fams, "lychee_request_documents", "lychee_request_documents_sum", method="Rerank") == 7
    assert sample(fams, "lychee_request_tokens", "lychee_request_tokens_sum", method="Rerank") == 300
    assert sample(fams, "lychee_preprocess_duration_seconds", "lychee_preprocess_duration_seconds_sum") == 0.008
    assert sample(fams, "lychee_documents_truncated", "lychee_documents_truncated_total") == 2


def test_engine_callbacks_fill_batch_and_queue_histograms():
    m = PrometheusObserver()
    m.batch_done(documents=16, tokens=4000, images=3, seconds=0.05)
    m.queue_wait(0.002)
    fams = families(m)
    assert sample(fams, "lychee_batch_documents", "lychee_batch_documents_sum") == 16
    assert sample(fams, "lychee_batch_tokens", "lychee_batch_tokens_sum") == 4000
    assert sample(fams, "lychee_inference_duration_seconds", "lychee_inference_duration_seconds_count") == 1
    assert sample(fams, "lychee_queue_wait_seconds", "lychee_queue_wait_seconds_bucket", le="0.005") == 1


def test_engine_snapshot_is_read_at_scrape_time():
    m = PrometheusObserver()
    current = {"stats": [stats()]}
    m.watch_engine(lambda: current["stats"], lambda: 3)
    fams = families(m)
    assert sample(fams, "lychee_requests_in_flight", "lychee_requests_in_flight") == 3
    assert sample(fams, "lychee_queue_tokens", "lychee_queue_tokens") == 900
    assert sample(fams, "lychee_queue_documents", "lychee_queue_documents") == 4
    assert fams["lychee_documents_scored"].type == "counter"
    assert sample(fams, "lychee_documents_scored", "lychee_documents_scored_total") == 42
    assert sample(fams, "lychee_documents_dropped", "lychee_documents_dropped_total", reason="deadline") == 1
    assert sample(fams, "lychee_oom_splits", "lychee_oom_splits_total") == 1
    assert sample(fams, "lychee_oom_documents", "lychee_oom_documents_total", outcome="retried") == 3
    assert sample(fams, "lychee_oom_documents", "lychee_oom_documents_total", outcome="refused") == 2
    assert sample(fams, "lychee_prefix_tokens_saved", "lychee_prefix_tokens_saved_total") == 700
    assert sample(fams, "lychee_image_cache_hits", "lychee_image_cache_hits_total") == 3
    assert sample(fams, "lychee_image_cache_misses", "lychee_image_cache_misses_total") == 9
    assert sample(fams, "lychee_image_cache_bytes", "lychee_image_cache_bytes") == 1024
    assert sample(fams, "lychee_gpu_memory_allocated_bytes", "lychee_gpu_memory_allocated_bytes",
                  device="cuda:1") == 10
    assert sample(fams, "lychee_gpu_memory_reserved_bytes", "lychee_gpu_memory_reserved_bytes",
                  device="cuda:0") == 2000
    current["stats"] = [stats(queue_tokens=0)]
    assert sample(families(m), "lychee_queue_tokens", "lychee_queue_tokens") == 0


def test_while_the_engine_loads_only_the_request_gauges_are_exposed():
    m = PrometheusObserver()
    m.watch_engine(lambda: [], lambda: 0)
    fams = families(m)
    assert "lychee_requests_in_flight" in fams
    assert "lychee_queue_tokens" not in fams


def test_build_info_is_one_labelled_series():
    m = PrometheusObserver()
    m.set_build_info("0.1.0", "lychee/old", "bfloat16", "cuda:0")
    m.set_build_info("0.1.0", "lychee/new", "bfloat16", "cuda:0")
    fams = families(m)
    series = fams["lychee_build"].samples if "lychee_build" in fams else fams["lychee_build_info"].samples
    assert [(s.labels["model"], s.value) for s in series] == [("lychee/new", 1.0)]


def test_every_metric_name_has_the_lychee_prefix():
    m = PrometheusObserver()
    m.watch_engine(lambda: [stats()], lambda: 0)
    m.watch_score_cache(ScoreCacheStats)
    m.request_done("grpc", "Rerank", "OK", 0.01, "", "")
    assert all(name.startswith("lychee_") for name in families(m))


def test_every_exposed_metric_is_in_the_operations_doc():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    m = PrometheusObserver()
    m.watch_engine(lambda: [stats()], lambda: 0)
    m.watch_score_cache(ScoreCacheStats)
    m.request_done("grpc", "Rerank", "OK", 0.01, "", "")
    m.set_build_info("v", "m", "d", "x")
    names = {sample.name for family in families(m).values() for sample in family.samples}
    shown = {n for n in names if not n.endswith(("_bucket", "_sum", "_count", "_created"))}
    missing = sorted(n for n in shown if f"`{n}`" not in doc)
    assert not missing, f"not in docs/operations.md: {missing}"


def test_worker_snapshots_by_device_are_summed_with_memory_per_device():
    m = PrometheusObserver()
    m.watch_engine(lambda: [stats(device="cuda:0", gpu_memory=(DeviceMemory("cuda:0", 1, 2),)),
                            stats(device="cuda:1", gpu_memory=(DeviceMemory("cuda:1", 3, 4),))], lambda: 0,
                   per_device=True)
    fams = families(m)
    assert sample(fams, "lychee_documents_scored", "lychee_documents_scored_total") == 84
    assert sample(fams, "lychee_queue_tokens", "lychee_queue_tokens") == 1800
    assert sample(fams, "lychee_documents_dropped", "lychee_documents_dropped_total", reason="cancelled") == 4
    assert sample(fams, "lychee_oom_documents", "lychee_oom_documents_total", outcome="refused") == 4
    assert sample(fams, "lychee_gpu_memory_allocated_bytes", "lychee_gpu_memory_allocated_bytes", device="cuda:1") == 3
    assert sample(fams, "lychee_worker_batches", "lychee_worker_batches_total", device="cuda:1") == 5


def test_one_in_process_engine_has_no_per_device_series():
    m = PrometheusObserver()
    m.watch_engine(lambda: [stats()], lambda: 0)
    assert "lychee_worker_batches" not in families(m)


def test_the_score_cache_counters_are_read_at_scrape_time():
    m = PrometheusObserver()
    current = {"stats": ScoreCacheStats(entries=3, bytes=960, capacity_bytes=1 << 20, hits=7, misses=3, evictions=1,
                                        coalesced=2, deduplicated=4)}
    m.watch_score_cache(lambda: current["stats"])
    fams = families(m)
    assert sample(fams, "lychee_score_cache_hits", "lychee_score_cache_hits_total") == 7
    assert sample(fams, "lychee_score_cache_misses", "lychee_score_cache_misses_total") == 3
    assert sample(fams, "lychee_score_cache_evictions", "lychee_score_cache_evictions_total") == 1
    assert sample(fams, "lychee_score_cache_coalesced", "lychee_score_cache_coalesced_total") == 2
    assert sample(fams, "lychee_documents_deduplicated", "lychee_documents_deduplicated_total") == 4
    assert sample(fams, "lychee_score_cache_bytes", "lychee_score_cache_bytes") == 960
    current["stats"] = ScoreCacheStats(hits=8)
    assert sample(families(m), "lychee_score_cache_hits", "lychee_score_cache_hits_total") == 8
