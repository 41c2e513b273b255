package ai.lychee.client.failopen;

import io.github.resilience4j.circuitbreaker.CircuitBreaker;
import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.DistributionSummary;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Timer;

/**
 * Fail-open results as Micrometer meters, so that fall-backs show on the caller's dashboards:
 *
 * <ul>
 *   <li>{@code lychee.rerank.failopen.calls{outcome}}: a counter per {@link Outcome#tag()};
 *   <li>{@code lychee.rerank.failopen.latency{outcome}}: a timer;
 *   <li>{@code lychee.rerank.failopen.scored.ratio}: the share of candidates scored, per call;
 *   <li>with {@link #bind(CircuitBreaker)}: {@code lychee.rerank.failopen.circuit.state{name,state}}, 1 for
 *       the breaker's current state and 0 for the others, and
 *       {@code lychee.rerank.failopen.circuit.failure.rate{name}} (percent, -1 until enough calls).
 * </ul>
 *
 * Needs {@code io.micrometer:micrometer-core} on the classpath (an optional dependency of this
 * client: bring your own). A breaker of your own {@code CircuitBreakerRegistry} can instead be
 * published with resilience4j-micrometer's {@code TaggedCircuitBreakerMetrics}.
 */
public final class MicrometerFailOpenMetrics implements FailOpenListener {
  private final MeterRegistry registry;
  private final String prefix;
  private final DistributionSummary scoredRatio;

  public MicrometerFailOpenMetrics(MeterRegistry registry) {
    this(registry, "lychee.rerank.failopen");
  }

  public MicrometerFailOpenMetrics(MeterRegistry registry, String prefix) {
    this.registry = registry;
    this.prefix = prefix;
    this.scoredRatio = DistributionSummary.builder(prefix + ".scored.ratio")
        .description("share of the candidates scored by the reranker in time").register(registry);
  }

  /** Also publishes the breaker's state and failure rate; returns this. */
  public MicrometerFailOpenMetrics bind(CircuitBreaker breaker) {
    for (CircuitBreaker.State state : CircuitBreaker.State.values()) {
      Gauge.builder(prefix + ".circuit.state", breaker, b -> b.getState() == state ? 1 : 0)
          .description("1 for the circuit breaker's current state")
          .tag("name", breaker.getName()).tag("state", state.name().toLowerCase(java.util.Locale.ROOT))
          .register(registry);
    }
    Gauge.builder(prefix + ".circuit.failure.rate", breaker, b -> b.getMetrics().getFailureRate())
        .description("failure rate over the breaker's window, percent (-1 until enough calls)")
        .tag("name", breaker.getName()).register(registry);
    return this;
  }

  @Override
  public void onResult(FailOpenResult result) {
    String outcome = result.outcome().tag();
    Counter.builder(prefix + ".calls").description("fail-open rerank calls by outcome").tag("outcome", outcome)
        .register(registry).increment();
    Timer.builder(prefix + ".latency").description("fail-open rerank time, budget included").tag("outcome", outcome)
        .register(registry).record(result.elapsed());
    if (result.size() > 0) {
      scoredRatio.record((double) result.scoredCount() / result.size());
    }
  }
}
