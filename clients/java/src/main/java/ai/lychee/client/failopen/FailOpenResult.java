package ai.lychee.client.failopen;

import ai.lychee.client.LycheeException;
import ai.lychee.grpc.v1.RerankResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;
import java.util.OptionalDouble;

/**
 * What a fail-open rerank serves: an order of the candidates (always all of them, always in time),
 * the {@link Outcome}, and what the reranker said.
 */
public final class FailOpenResult {
  private final Outcome outcome;
  private final int[] order;
  private final float[] scores;
  private final boolean[] scored;
  private final int scoredCount;
  private final Duration elapsed;
  private final int attempts;
  private final LycheeException error;
  private final RerankResponse response;

  FailOpenResult(Outcome outcome, int[] order, float[] scores, boolean[] scored, Duration elapsed, int attempts,
      LycheeException error, RerankResponse response) {
    this.outcome = outcome;
    this.order = order;
    this.scores = scores;
    this.scored = scored;
    int count = 0;
    for (boolean s : scored) {
      count += s ? 1 : 0;
    }
    this.scoredCount = count;
    this.elapsed = elapsed;
    this.attempts = attempts;
    this.error = error;
    this.response = response;
  }

  public Outcome outcome() {
    return outcome;
  }

  /** True when the incoming order was served unchanged (see {@link Outcome#fellBack()}). */
  public boolean fellBack() {
    return outcome.fellBack();
  }

  /** {@code order()[k]} is the incoming index of the candidate at rank k: a permutation of 0..n-1. */
  public int[] order() {
    return order.clone();
  }

  /** The caller's candidates (or anything parallel to them) in the served order. */
  public <T> List<T> apply(List<T> incoming) {
    if (incoming.size() != order.length) {
      throw new IllegalArgumentException("expected " + order.length + " items, got " + incoming.size());
    }
    List<T> out = new ArrayList<>(order.length);
    for (int i : order) {
      out.add(incoming.get(i));
    }
    return out;
  }

  /** The score of the candidate at incoming index {@code index}, if it was scored. */
  public OptionalDouble score(int index) {
    return scored[index] ? OptionalDouble.of(scores[index]) : OptionalDouble.empty();
  }

  /** How many candidates were scored (all of them when {@link Outcome#RERANKED}). */
  public int scoredCount() {
    return scoredCount;
  }

  /** The number of candidates. */
  public int size() {
    return order.length;
  }

  /** Time from the call to its return (never much past the budget). */
  public Duration elapsed() {
    return elapsed;
  }

  /** Calls made to the reranker: 0 with the circuit open, 2 after an honoured RetryInfo. */
  public int attempts() {
    return attempts;
  }

  /** The error that ended the call, when one did (absent for RERANKED and for a budget spent client-side). */
  public Optional<LycheeException> error() {
    return Optional.ofNullable(error);
  }

  /** The server's full response when {@link Outcome#RERANKED} (scores, bands, usage, request id). */
  public Optional<RerankResponse> response() {
    return Optional.ofNullable(response);
  }

  @Override
  public String toString() {
    return "FailOpenResult{" + outcome.tag() + ", scored " + scoredCount + "/" + order.length + ", "
        + elapsed.toMillis() + " ms, attempts " + attempts + (error == null ? "" : ", " + error.getMessage())
        + ", order " + Arrays.toString(order.length > 12 ? Arrays.copyOf(order, 12) : order) + "}";
  }
}
