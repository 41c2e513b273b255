package ai.lychee.client.failopen;

/**
 * Told of every fail-open call, on the calling thread, just before it returns: feed your metrics
 * and logs from here ({@link MicrometerFailOpenMetrics} does it for Micrometer). Keep it cheap; an
 * exception it throws is swallowed so that it can never break a search.
 */
@FunctionalInterface
public interface FailOpenListener {
  void onResult(FailOpenResult result);
}
