package ai.lychee.client.failopen;

/**
 * How a fail-open rerank ended. {@link #RERANKED} and {@link #PARTIAL} served scores; every other
 * outcome served the incoming (retrieval) order and names why.
 */
public enum Outcome {
  /** Every candidate was scored in time: the reranker's order. */
  RERANKED,
  /**
   * The call ended before every candidate was scored (the budget ran out mid-list, or the replica
   * failed mid-stream): scored candidates are reordered among the positions they held, the others
   * keep theirs ({@link PartialOrder}).
   */
  PARTIAL,
  /** The budget ran out before any candidate was scored (the server was reached, but was slow). */
  DEADLINE,
  /** RESOURCE_EXHAUSTED, and its RetryInfo delay did not fit in what was left of the budget. */
  OVERLOADED,
  /** No replica could take the call: down, draining, still loading, or unreachable. */
  UNAVAILABLE,
  /** UNAUTHENTICATED: a missing or wrong bearer token (a configuration error: alert on it). */
  UNAUTHENTICATED,
  /** INVALID_ARGUMENT or a request too large: this request can never be reranked as sent. */
  INVALID,
  /** The circuit breaker is open: the reranker was not called at all. */
  CIRCUIT_OPEN,
  /** Any other error (INTERNAL, a broken stream...). */
  FAILED;

  /** True when the incoming order was served unchanged. */
  public boolean fellBack() {
    return this != RERANKED && this != PARTIAL;
  }

  /** The lower-case name used as a metric tag and in logs ("circuit_open"). */
  public String tag() {
    return name().toLowerCase(java.util.Locale.ROOT);
  }
}
