package ai.lychee.client.failopen;

import ai.lychee.client.LycheeException;
import ai.lychee.client.LycheeOverloadedException;
import ai.lychee.client.LycheeRerankClient;
import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.Query;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import ai.lychee.grpc.v1.RerankStreamRequest;
import ai.lychee.grpc.v1.RerankStreamResponse;
import ai.lychee.grpc.v1.StreamOptions;
import io.github.resilience4j.circuitbreaker.CircuitBreaker;
import io.github.resilience4j.circuitbreaker.CircuitBreakerConfig;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientStreamTracer;
import io.grpc.ConnectivityState;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * Reranking that can never break a search: {@link #rerank} takes the candidates in retrieval order
 * and a latency budget, and always returns an order of all of them within the budget.
 *
 * <ul>
 *   <li>The candidates go over {@code RerankStream}, so each score is known as soon as it is
 *       computed. When the final ranking arrives in time: {@link Outcome#RERANKED}. When the budget
 *       runs out first: {@link Outcome#PARTIAL} with {@link PartialOrder} over what was scored (the
 *       call is cancelled, and the server drops the rest), or {@link Outcome#DEADLINE} when nothing
 *       was.
 *   <li>Any error serves the incoming order with its reason ({@link Outcome}).
 *       {@code RESOURCE_EXHAUSTED} with a {@code RetryInfo} delay is retried once the delay has passed
 *       only when the delay plus {@link Builder#minRetryWindow(Duration)} fits in what is left of the
 *       budget; otherwise it is {@link Outcome#OVERLOADED} at once.
 *   <li>A resilience4j {@link CircuitBreaker} sees every call: once it opens, calls return
 *       {@link Outcome#CIRCUIT_OPEN} in microseconds without touching the network; after its wait it
 *       lets a few calls probe, and closes when they succeed. Budget overruns count as failures, so a
 *       replica set slowed past the budget also opens it; INVALID requests do not count.
 *   <li>A {@link FailOpenListener} hears every result ({@link MicrometerFailOpenMetrics} for
 *       Micrometer).
 * </ul>
 *
 * Thread-safe; share one per client. The call blocks the calling thread for at most the budget
 * (plus the time to cancel the call, well under a millisecond).
 */
public final class FailOpenReranker {
  private static final Logger LOG = Logger.getLogger(FailOpenReranker.class.getName());

  private final LycheeRerankClient client;
  private final Duration budget;
  private final int chunkSize;
  private final Duration minRetryWindow;
  private final CircuitBreaker breaker;
  private final FailOpenListener listener;

  private FailOpenReranker(Builder b) {
    this.client = b.client;
    this.budget = b.budget;
    this.chunkSize = b.chunkSize;
    this.minRetryWindow = b.minRetryWindow;
    this.breaker = b.breaker != null ? b.breaker : CircuitBreaker.of("lychee-rerank", defaultBreakerConfig());
    this.listener = b.listener;
  }

  public static Builder newBuilder(LycheeRerankClient client) {
    return new Builder(client);
  }

  /**
   * The breaker used when none is given: over the last 20 calls (at least 5), open at 50% failures;
   * stay open 5 s, then let 3 calls probe; close when they succeed.
   */
  public static CircuitBreakerConfig defaultBreakerConfig() {
    return CircuitBreakerConfig.custom()
        .slidingWindowType(CircuitBreakerConfig.SlidingWindowType.COUNT_BASED)
        .slidingWindowSize(20)
        .minimumNumberOfCalls(5)
        .failureRateThreshold(50)
        .waitDurationInOpenState(Duration.ofSeconds(5))
        .permittedNumberOfCallsInHalfOpenState(3)
        .build();
  }

  /** The circuit breaker: its state, metrics and events ({@code getEventPublisher()}). */
  public CircuitBreaker circuitBreaker() {
    return breaker;
  }

  /** The default budget. */
  public Duration budget() {
    return budget;
  }

  /** Reranks with the default budget and the server's default instruction. */
  public FailOpenResult rerank(Query query, List<Document> candidates) {
    return rerank(StreamOptions.newBuilder().setQuery(query).build(), candidates, budget);
  }

  /** Reranks within {@code budget}. */
  public FailOpenResult rerank(Query query, List<Document> candidates, Duration budget) {
    return rerank(StreamOptions.newBuilder().setQuery(query).build(), candidates, budget);
  }

  /**
   * Reranks with stream options (instruction, truncation, max tokens per document) within
   * {@code budget}. {@code top_n}, {@code min_score} and {@code return_documents} are cleared: the
   * served order always holds every candidate.
   */
  public FailOpenResult rerank(StreamOptions options, List<Document> candidates, Duration budget) {
    Objects.requireNonNull(options, "options");
    Objects.requireNonNull(candidates, "candidates");
    if (budget == null || budget.isNegative() || budget.isZero()) {
      throw new IllegalArgumentException("budget must be positive: " + budget);
    }
    long start = System.nanoTime();
    long end = start + budget.toNanos();
    int n = candidates.size();
    StreamOptions opts = options.toBuilder().clearTopN().clearMinScore().clearReturnDocuments().build();
    FailOpenResult result;
    if (n == 0) {
      result = new FailOpenResult(Outcome.RERANKED, new int[0], new float[0], new boolean[0], since(start), 0, null,
          null);
    } else {
      result = call(opts, candidates, start, end);
    }
    if (listener != null) {
      try {
        listener.onResult(result);
      } catch (RuntimeException e) {
        LOG.log(Level.WARNING, "FailOpenListener threw; ignored", e);
      }
    }
    return result;
  }

  private FailOpenResult call(StreamOptions opts, List<Document> candidates, long start, long end) {
    int n = candidates.size();
    int attempts = 0;
    while (true) {
      if (!breaker.tryAcquirePermission()) {
        return fallBack(Outcome.CIRCUIT_OPEN, n, start, attempts, null);
      }
      attempts++;
      long attemptStart = System.nanoTime();
      Attempt a = new Attempt(n);
      a.run(opts, candidates, end);
      long took = System.nanoTime() - attemptStart;

      if (a.ranking != null && a.error == null) {
        int[] order = a.rankingOrder(n);
        if (order != null) {
          breaker.onSuccess(took, TimeUnit.NANOSECONDS);
          return new FailOpenResult(Outcome.RERANKED, order, a.scores, a.scored, since(start), attempts, null,
              a.ranking);
        }
        // A ranking that is not a permutation of the candidates: use the scores, not its order.
        a.error = new LycheeException(Status.Code.INTERNAL, "the ranking does not hold every candidate once");
      }
      if (a.error == null) { // the budget ran out client-side
        LycheeException spent = new LycheeException(Status.Code.DEADLINE_EXCEEDED, "fail-open budget spent");
        breaker.onError(took, TimeUnit.NANOSECONDS, spent);
        return a.scoredCount > 0 ? partial(a, start, attempts, null)
            : fallBack(deadlineOrUnavailable(a), n, start, attempts, null);
      }
      LycheeException e = a.error;
      if (e.getCode() == Status.Code.INVALID_ARGUMENT) {
        breaker.releasePermission(); // this request's fault, not the reranker's
        return fallBack(Outcome.INVALID, n, start, attempts, e);
      }
      breaker.onError(took, TimeUnit.NANOSECONDS, e);
      if (a.scoredCount > 0) {
        return partial(a, start, attempts, e);
      }
      switch (e.getCode()) {
        case DEADLINE_EXCEEDED -> {
          return fallBack(deadlineOrUnavailable(a), n, start, attempts, e);
        }
        case UNAVAILABLE, CANCELLED -> {
          // CANCELLED not of our doing (ours ends the call without an error): the replica ended it.
          return fallBack(Outcome.UNAVAILABLE, n, start, attempts, e);
        }
        case UNAUTHENTICATED -> {
          return fallBack(Outcome.UNAUTHENTICATED, n, start, attempts, e);
        }
        case RESOURCE_EXHAUSTED -> {
          if (e instanceof LycheeOverloadedException over && fits(over.retryAfter(), end)) {
            if (sleep(over.retryAfter())) {
              continue; // the retry fits in the budget: try once more
            }
          }
          return fallBack(Outcome.OVERLOADED, n, start, attempts, e);
        }
        default -> {
          return fallBack(Outcome.FAILED, n, start, attempts, e);
        }
      }
    }
  }

  /** Whether waiting {@code delay} still leaves {@link Builder#minRetryWindow} before the budget ends. */
  private boolean fits(Duration delay, long end) {
    return System.nanoTime() + delay.toNanos() + minRetryWindow.toNanos() <= end;
  }

  private static boolean sleep(Duration d) {
    try {
      TimeUnit.NANOSECONDS.sleep(d.toNanos());
      return true;
    } catch (InterruptedException ie) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  /**
   * A call that timed out with nothing scored: DEADLINE when a replica took the latest attempt (sent
   * its headers) but was too slow; UNAVAILABLE when the budget went on gRPC's own retries of
   * UNAVAILABLE (the last attempt a replica ended was refused: loading, draining, down) or on
   * connecting (the channel is not READY); else DEADLINE.
   */
  private Outcome deadlineOrUnavailable(Attempt a) {
    Attempt.AttemptTracer latest = a.latestAttempt;
    if (latest != null && latest.taken) {
      return Outcome.DEADLINE; // read before that attempt's own close, which the cancel makes later
    }
    Status last = a.lastAttemptStatus;
    if (last != null && last.getCode() == Status.Code.UNAVAILABLE) {
      return Outcome.UNAVAILABLE;
    }
    ConnectivityState state = client.channel().getState(false);
    return state == ConnectivityState.READY || state == ConnectivityState.IDLE ? Outcome.DEADLINE
        : Outcome.UNAVAILABLE;
  }

  private static Duration since(long start) {
    return Duration.ofNanos(System.nanoTime() - start);
  }

  private static FailOpenResult fallBack(Outcome outcome, int n, long start, int attempts, LycheeException e) {
    return new FailOpenResult(outcome, PartialOrder.identity(n), new float[n], new boolean[n], since(start), attempts,
        e, null);
  }

  private static FailOpenResult partial(Attempt a, long start, int attempts, LycheeException e) {
    return new FailOpenResult(Outcome.PARTIAL, PartialOrder.of(a.scores, a.scored), a.scores, a.scored, since(start),
        attempts, e, null);
  }

  /** One RerankStream call: sends the candidates, gathers scores until the ranking, an error or the budget. */
  private final class Attempt implements ClientResponseObserver<RerankStreamRequest, RerankStreamResponse> {
    final float[] scores;
    final boolean[] scored;
    int scoredCount;
    RerankResponse ranking;
    LycheeException error;
    private boolean closed; // guarded by this: after it, late events are ignored
    private final CountDownLatch done = new CountDownLatch(1);
    private volatile ClientCallStreamObserver<RerankStreamRequest> requests;
    /**
     * The status of this call's latest gRPC attempt that the replica or the transport ended (gRPC
     * retries UNAVAILABLE by itself); attempts ended by the call's own cancel or deadline are left out.
     */
    volatile Status lastAttemptStatus;
    /** This call's latest gRPC attempt (gRPC makes one tracer per attempt, in order). */
    volatile AttemptTracer latestAttempt;

    /** Sees one gRPC attempt: whether a replica took it, and how it ended. */
    final class AttemptTracer extends ClientStreamTracer {
      volatile boolean taken; // a replica sent its headers: it took the attempt

      @Override
      public void inboundHeaders() {
        taken = true;
      }

      @Override
      public void streamClosed(Status status) {
        // An attempt ended by this call's own end (the budget's cancel, gRPC's deadline) says
        // nothing of the replica, and may close after the attempt the replica refused.
        Status.Code code = status.getCode();
        if (code != Status.Code.CANCELLED && code != Status.Code.DEADLINE_EXCEEDED) {
          lastAttemptStatus = status;
        }
      }
    }

    /** Adds a stream tracer to the call, which sees each attempt's end. */
    private final ClientInterceptor attemptTracer = new ClientInterceptor() {
      @Override
      public <Q, R> ClientCall<Q, R> interceptCall(MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
        return next.newCall(method, options.withStreamTracerFactory(new ClientStreamTracer.Factory() {
          @Override
          public ClientStreamTracer newClientStreamTracer(ClientStreamTracer.StreamInfo info, Metadata headers) {
            AttemptTracer tracer = new AttemptTracer();
            latestAttempt = tracer;
            return tracer;
          }
        }));
      }
    };

    Attempt(int n) {
      scores = new float[n];
      scored = new boolean[n];
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<RerankStreamRequest> requestStream) {
      requests = requestStream;
    }

    void run(StreamOptions opts, List<Document> candidates, long end) {
      long left = end - System.nanoTime();
      if (left <= 0) {
        close(null);
        return;
      }
      try {
        client.rerankStream(this, Duration.ofNanos(left), attemptTracer);
        int n = candidates.size();
        int first = Math.min(n, chunkSize);
        // Sent without waiting for flow control: the candidates of one search are bounded, and
        // gRPC buffers what the transport cannot take yet.
        requests.onNext(RerankStreamRequest.newBuilder().setOptions(opts)
            .addAllDocuments(candidates.subList(0, first)).build());
        for (int i = first; i < n; i += chunkSize) {
          requests.onNext(RerankStreamRequest.newBuilder()
              .addAllDocuments(candidates.subList(i, Math.min(n, i + chunkSize))).build());
        }
        requests.onCompleted();
      } catch (RuntimeException e) {
        // The call ended while we were sending (its own error arrives in onError), or could not start.
        if (requests == null) {
          close(LycheeException.from(e));
          return;
        }
      }
      try {
        long wait = end - System.nanoTime();
        if (wait <= 0 || !done.await(wait, TimeUnit.NANOSECONDS)) {
          synchronized (this) {
            closed = true;
          }
          requests.cancel("fail-open budget spent", null);
        }
      } catch (InterruptedException ie) {
        Thread.currentThread().interrupt();
        synchronized (this) {
          closed = true;
        }
        requests.cancel("interrupted", ie);
      }
      synchronized (this) {
        closed = true;
      }
    }

    @Override
    public void onNext(RerankStreamResponse value) {
      synchronized (this) {
        if (closed) {
          return;
        }
        switch (value.getEventCase()) {
          case SCORED -> {
            RerankResult r = value.getScored();
            int i = r.getIndex();
            if (i >= 0 && i < scored.length && !scored[i]) {
              scored[i] = true;
              scores[i] = r.getScore();
              scoredCount++;
            }
          }
          case RANKING -> ranking = value.getRanking();
          default -> { /* an event this client does not know */ }
        }
      }
    }

    @Override
    public void onError(Throwable t) {
      close(LycheeException.from(t));
    }

    @Override
    public void onCompleted() {
      close(ranking == null ? new LycheeException(Status.Code.INTERNAL, "RerankStream ended without a ranking")
          : null);
    }

    private void close(LycheeException e) {
      synchronized (this) {
        if (!closed) {
          closed = true;
          error = e;
        }
      }
      done.countDown();
    }

    /** The ranking's order when it holds each candidate exactly once (top_n and min_score are cleared). */
    synchronized int[] rankingOrder(int n) {
      List<RerankResult> results = ranking.getResultsList();
      if (results.size() != n) {
        return null;
      }
      int[] order = new int[n];
      boolean[] seen = new boolean[n];
      for (int k = 0; k < n; k++) {
        int i = results.get(k).getIndex();
        if (i < 0 || i >= n || seen[i]) {
          return null;
        }
        seen[i] = true;
        order[k] = i;
        scored[i] = true;
        scores[i] = results.get(k).getScore();
      }
      scoredCount = n;
      return order;
    }
  }

  /** Builder of {@link FailOpenReranker}. */
  public static final class Builder {
    private final LycheeRerankClient client;
    private Duration budget = Duration.ofMillis(300);
    private int chunkSize = 25;
    private Duration minRetryWindow = Duration.ofMillis(20);
    private CircuitBreaker breaker;
    private FailOpenListener listener;

    private Builder(LycheeRerankClient client) {
      this.client = Objects.requireNonNull(client, "client");
    }

    /** The default latency budget of a call (default 300 ms); {@code rerank(..., budget)} overrides it. */
    public Builder budget(Duration budget) {
      if (budget == null || budget.isNegative() || budget.isZero()) {
        throw new IllegalArgumentException("budget must be positive: " + budget);
      }
      this.budget = budget;
      return this;
    }

    /** Candidates per stream message (default 25): the server starts on the first chunk at once. */
    public Builder chunkSize(int chunkSize) {
      if (chunkSize < 1) {
        throw new IllegalArgumentException("chunkSize must be at least 1");
      }
      this.chunkSize = chunkSize;
      return this;
    }

    /**
     * After an overload's RetryInfo delay, at least this much of the budget must be left for the
     * retry to be made (default 20 ms); otherwise the call falls back as OVERLOADED at once.
     */
    public Builder minRetryWindow(Duration window) {
      this.minRetryWindow = Objects.requireNonNull(window, "window");
      return this;
    }

    /** Your own resilience4j breaker (e.g. from your CircuitBreakerRegistry); default: {@link #defaultBreakerConfig()}. */
    public Builder circuitBreaker(CircuitBreaker breaker) {
      this.breaker = Objects.requireNonNull(breaker, "breaker");
      return this;
    }

    /** Told of every result, e.g. {@link MicrometerFailOpenMetrics}. */
    public Builder listener(FailOpenListener listener) {
      this.listener = listener;
      return this;
    }

    public FailOpenReranker build() {
      return new FailOpenReranker(this);
    }
  }
}
