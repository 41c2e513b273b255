package ai.lychee.client;

import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.ExplainRequest;
import ai.lychee.grpc.v1.ExplainResponse;
import ai.lychee.grpc.v1.GetModelInfoRequest;
import ai.lychee.grpc.v1.GetModelInfoResponse;
import ai.lychee.grpc.v1.Query;
import ai.lychee.grpc.v1.RerankRequest;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import ai.lychee.grpc.v1.RerankServiceGrpc;
import ai.lychee.grpc.v1.RerankStreamRequest;
import ai.lychee.grpc.v1.RerankStreamResponse;
import ai.lychee.grpc.v1.StreamOptions;
import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import java.io.Closeable;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * Typed client of the {@code lychee.v1.RerankService} multimodal reranker.
 *
 * <pre>{@code
 * try (LycheeRerankClient client = LycheeRerankClient.newBuilder("dns:///lychee.search.svc.cluster.local:50051")
 *     .deadline(Duration.ofMillis(500))
 *     .build()) {
 *   RerankResponse r = client.rerankTexts("retro denim jacket", titles);
 *   for (RerankResult res : r.getResultsList()) {
 *     System.out.println(res.getIndex() + " " + res.getScore());
 *   }
 * }
 * }</pre>
 *
 * <ul>
 *   <li>Every call gets the builder's deadline (default 10 s) unless one is passed explicitly.
 *   <li>UNAVAILABLE (model loading, server draining) is retried by gRPC itself through the channel's
 *       service config; no other code is retried.
 *   <li>A {@code dns:///} target (e.g. a headless Kubernetes Service) uses {@code round_robin}, so
 *       calls are spread over every resolved pod instead of pinning one HTTP/2 connection, with
 *       client-side health checking of {@code lychee.v1.RerankService}, so a pod that is loading or
 *       draining gets no new calls.
 *   <li>Errors are thrown as {@link LycheeException}; INVALID_ARGUMENT as
 *       {@link LycheeInvalidArgumentException} with the field violations, UNAUTHENTICATED as
 *       {@link LycheeUnauthenticatedException}, and an overloaded server's RESOURCE_EXHAUSTED as
 *       {@link LycheeOverloadedException} with the delay it asks for (not retried automatically).
 *   <li>{@link Builder#bearerToken(String)} sends {@code authorization: Bearer <token>} on every call,
 *       over TLS only unless {@link Builder#allowBearerTokenOverPlaintext()} is given.
 * </ul>
 *
 * Instances are thread-safe; create one per target and share it. {@link #close()} shuts the channel
 * down (unless it was supplied by the caller through {@link Builder#channel(ManagedChannel)}).
 */
public final class LycheeRerankClient implements Closeable {
  /** The fully qualified gRPC service name, as used in the service config. */
  public static final String SERVICE_NAME = RerankServiceGrpc.SERVICE_NAME;

  private final ManagedChannel channel;
  private final boolean ownsChannel;
  private final Duration deadline;
  private final RerankServiceGrpc.RerankServiceBlockingStub blockingStub;
  private final RerankServiceGrpc.RerankServiceStub asyncStub;

  private LycheeRerankClient(
      ManagedChannel channel, boolean ownsChannel, Duration deadline, CallCredentials callCredentials) {
    this.channel = channel;
    this.ownsChannel = ownsChannel;
    this.deadline = deadline;
    RerankServiceGrpc.RerankServiceBlockingStub blocking = RerankServiceGrpc.newBlockingStub(channel);
    RerankServiceGrpc.RerankServiceStub async = RerankServiceGrpc.newStub(channel);
    if (callCredentials != null) {
      blocking = blocking.withCallCredentials(callCredentials);
      async = async.withCallCredentials(callCredentials);
    }
    this.blockingStub = blocking;
    this.asyncStub = async;
  }

  /** A builder for a client of {@code target}: {@code host:port}, {@code dns:///host:port}, etc. */
  public static Builder newBuilder(String target) {
    return new Builder(target);
  }

  /** A builder over an existing channel (which the client will not shut down). */
  public static Builder newBuilder(ManagedChannel channel) {
    return new Builder(null).channel(channel);
  }

  /** The underlying channel, e.g. for a health check stub. */
  public ManagedChannel channel() {
    return channel;
  }

  /** The default per-call deadline, or {@code null} for none. */
  public Duration deadline() {
    return deadline;
  }

  // ---------------------------------------------------------------------------------------------
  // Unary rerank

  /**
   * Reranks one-line text documents (e.g. product titles) against a text query. Results come back
   * best first; {@link RerankResult#getIndex()} is the position in {@code documents}.
   */
  public RerankResponse rerankTexts(String query, List<String> documents) {
    return rerankTexts(query, documents, 0);
  }

  /** Like {@link #rerankTexts(String, List)}, keeping only the best {@code topN} (0 = all). */
  public RerankResponse rerankTexts(String query, List<String> documents, int topN) {
    return rerank(RerankRequest.newBuilder()
        .setQuery(Parts.textQuery(query))
        .addAllDocuments(Parts.textDocuments(documents))
        .setTopN(topN)
        .build());
  }

  /** Like {@link #rerankTexts(String, List)} with options: top_n, min_score, truncation, token limit... */
  public RerankResponse rerankTexts(String query, List<String> documents, RerankOptions options) {
    return rerank(Parts.textQuery(query), Parts.textDocuments(documents), options);
  }

  /** Reranks documents made of arbitrary parts (text, image, mixed) against a query. */
  public RerankResponse rerank(Query query, List<Document> documents) {
    return rerank(RerankRequest.newBuilder().setQuery(query).addAllDocuments(documents).build());
  }

  /** Like {@link #rerank(Query, List)} with options: top_n, min_score, truncation, token limit... */
  public RerankResponse rerank(Query query, List<Document> documents, RerankOptions options) {
    Objects.requireNonNull(options, "options");
    return rerank(options.applyTo(RerankRequest.newBuilder().setQuery(query).addAllDocuments(documents)).build());
  }

  /** The full request: instruction, top_n, return_documents. Uses the client's deadline. */
  public RerankResponse rerank(RerankRequest request) {
    return rerank(request, deadline);
  }

  /** The full request with an explicit deadline for this call ({@code null}: none). */
  public RerankResponse rerank(RerankRequest request, Duration callDeadline) {
    try {
      return withDeadline(blockingStub, callDeadline).rerank(request);
    } catch (RuntimeException e) {
      throw LycheeException.from(e);
    }
  }

  /**
   * Asynchronous rerank; the future fails with a {@link LycheeException}. Handy to fan out to
   * several rerank calls at once.
   */
  public CompletableFuture<RerankResponse> rerankAsync(RerankRequest request) {
    CompletableFuture<RerankResponse> future = new CompletableFuture<>();
    withDeadline(asyncStub, deadline).rerank(request, new StreamObserver<>() {
      @Override
      public void onNext(RerankResponse value) {
        future.complete(value);
      }

      @Override
      public void onError(Throwable t) {
        future.completeExceptionally(LycheeException.from(t));
      }

      @Override
      public void onCompleted() {
        if (!future.isDone()) {
          future.completeExceptionally(
              new LycheeException(Status.Code.INTERNAL, "Rerank completed without a response"));
        }
      }
    });
    return future;
  }

  /** The loaded model, its limits and the server's defaults. */
  public GetModelInfoResponse getModelInfo() {
    try {
      return withDeadline(blockingStub, deadline).getModelInfo(GetModelInfoRequest.getDefaultInstance());
    } catch (RuntimeException e) {
      throw LycheeException.from(e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Explain

  /**
   * Scores one query-document pair and attributes the score to the fragments of its texts (words or
   * short phrases) and the cells of a grid over each image, by occlusion: a fragment's
   * {@code attribution} is the full score minus the score without it (positive: it raised the
   * score). The server bounds the fragments per call ({@code limits.max_explain_fragments}).
   */
  public ExplainResponse explain(ExplainRequest request) {
    return explain(request, deadline);
  }

  /** {@link #explain(ExplainRequest)} with an explicit deadline for this call ({@code null}: none). */
  public ExplainResponse explain(ExplainRequest request, Duration callDeadline) {
    try {
      return withDeadline(blockingStub, callDeadline).explain(request);
    } catch (RuntimeException e) {
      throw LycheeException.from(e);
    }
  }

  /** Explains a document of any parts against a query, with the server's default instruction and grid. */
  public ExplainResponse explain(Query query, Document document) {
    return explain(ExplainRequest.newBuilder().setQuery(query).setDocument(document).build());
  }

  /** Explains a text document against a text query; only the document's fragments are attributed. */
  public ExplainResponse explainText(String query, String document) {
    return explain(Parts.textQuery(query), Parts.textDocument("", document));
  }

  // ---------------------------------------------------------------------------------------------
  // Streaming rerank

  /**
   * Streams documents in chunks and blocks until the final ranking arrives.
   *
   * <p>The first message carries {@code options} (query, instruction, top_n, return_documents);
   * then each chunk from {@code chunks} is sent as one message, on the calling thread, respecting
   * gRPC flow control (so {@code chunks} may be a lazy iterator over candidates still being
   * retrieved). {@code onScored} is called for every document as soon as the server has scored it,
   * on a gRPC thread, one call at a time; {@link RerankResult#getIndex()} is the document's position
   * in arrival order across all chunks. If {@code onScored} throws, the call is cancelled and the
   * exception is rethrown (wrapped in a LycheeException with code CANCELLED).
   *
   * @return the final ranking (best first, top_n applied)
   * @throws LycheeException on any error, including the deadline (DEADLINE_EXCEEDED)
   */
  public RerankResponse rerankStream(
      StreamOptions options, Iterator<? extends List<Document>> chunks, Consumer<? super RerankResult> onScored) {
    Objects.requireNonNull(options, "options");
    Objects.requireNonNull(chunks, "chunks");
    Objects.requireNonNull(onScored, "onScored");
    StreamCall call = new StreamCall(onScored);
    withDeadline(asyncStub, deadline).rerankStream(call);
    ClientCallStreamObserver<RerankStreamRequest> requests = call.requests;
    try {
      boolean first = true;
      while (true) {
        RerankStreamRequest msg;
        if (first) {
          msg = RerankStreamRequest.newBuilder().setOptions(options).build();
          first = false;
        } else if (chunks.hasNext()) {
          List<Document> chunk = chunks.next();
          if (chunk == null || chunk.isEmpty()) {
            continue;
          }
          msg = RerankStreamRequest.newBuilder().addAllDocuments(chunk).build();
        } else {
          break;
        }
        if (!call.awaitReady()) {
          break; // the call already failed; its error is reported below
        }
        requests.onNext(msg);
      }
      if (!call.result.isDone()) {
        requests.onCompleted();
      }
      return call.result.get();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      requests.cancel("interrupted", e);
      throw new LycheeException(Status.Code.CANCELLED, "interrupted while streaming");
    } catch (ExecutionException e) {
      throw LycheeException.from(e.getCause());
    } catch (RuntimeException e) {
      // Either the call ended under us while sending (its own error is the one to report), or the
      // caller's chunk iterator failed: cancel the call and rethrow.
      requests.cancel("client failed while sending", e);
      if (call.result.isCompletedExceptionally()) {
        try {
          call.result.join();
        } catch (java.util.concurrent.CompletionException ce) {
          throw LycheeException.from(ce.getCause());
        }
      }
      throw e;
    }
  }

  /** Like {@link #rerankStream(StreamOptions, Iterator, Consumer)} over an Iterable of chunks. */
  public RerankResponse rerankStream(
      StreamOptions options, Iterable<? extends List<Document>> chunks, Consumer<? super RerankResult> onScored) {
    return rerankStream(options, chunks.iterator(), onScored);
  }

  /** Streams {@code documents} in chunks of {@code chunkSize}; see the Iterator form. */
  public RerankResponse rerankStream(
      StreamOptions options, List<Document> documents, int chunkSize, Consumer<? super RerankResult> onScored) {
    return rerankStream(options, Parts.chunks(documents, chunkSize).iterator(), onScored);
  }

  /**
   * The raw bidirectional stream, with the client's deadline. The first request must carry
   * {@code options}; call {@code onCompleted()} on the returned observer to half-close, after which
   * the server sends the {@code ranking} message and completes. Errors reach
   * {@code responseObserver.onError} as gRPC exceptions: convert them with
   * {@link LycheeException#from(Throwable)}.
   */
  public StreamObserver<RerankStreamRequest> rerankStream(StreamObserver<RerankStreamResponse> responseObserver) {
    return withDeadline(asyncStub, deadline).rerankStream(responseObserver);
  }

  /** The raw bidirectional stream with an explicit deadline for this call ({@code null}: none). */
  public StreamObserver<RerankStreamRequest> rerankStream(
      StreamObserver<RerankStreamResponse> responseObserver, Duration callDeadline) {
    return withDeadline(asyncStub, callDeadline).rerankStream(responseObserver);
  }

  /** The raw stream with a deadline and interceptors for this call only (e.g. one that adds a stream tracer). */
  public StreamObserver<RerankStreamRequest> rerankStream(StreamObserver<RerankStreamResponse> responseObserver,
      Duration callDeadline, ClientInterceptor... interceptors) {
    return withDeadline(asyncStub, callDeadline).withInterceptors(interceptors).rerankStream(responseObserver);
  }

  /** One call of the blocking streaming helper: response side and flow-control bookkeeping. */
  private static final class StreamCall implements ClientResponseObserver<RerankStreamRequest, RerankStreamResponse> {
    final CompletableFuture<RerankResponse> result = new CompletableFuture<>();
    private final Consumer<? super RerankResult> onScored;
    private final Object readyLock = new Object();
    volatile ClientCallStreamObserver<RerankStreamRequest> requests;
    private RerankResponse ranking; // touched only from serialized gRPC callbacks

    StreamCall(Consumer<? super RerankResult> onScored) {
      this.onScored = onScored;
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<RerankStreamRequest> requestStream) {
      this.requests = requestStream;
      requestStream.setOnReadyHandler(() -> {
        synchronized (readyLock) {
          readyLock.notifyAll();
        }
      });
    }

    /** Waits until the transport can take a message; false if the call has already ended. */
    boolean awaitReady() throws InterruptedException {
      synchronized (readyLock) {
        while (!requests.isReady() && !result.isDone()) {
          readyLock.wait(50);
        }
      }
      return !result.isDone();
    }

    @Override
    public void onNext(RerankStreamResponse value) {
      if (result.isDone()) {
        return;
      }
      switch (value.getEventCase()) {
        case SCORED -> {
          try {
            onScored.accept(value.getScored());
          } catch (RuntimeException | Error e) {
            result.completeExceptionally(
                new LycheeException(Status.Code.CANCELLED, "onScored listener failed: " + e, e));
            requests.cancel("onScored listener failed", e);
            wake();
          }
        }
        case RANKING -> ranking = value.getRanking();
        default -> { /* an event this client version does not know: ignore */ }
      }
    }

    @Override
    public void onError(Throwable t) {
      result.completeExceptionally(LycheeException.from(t));
      wake();
    }

    @Override
    public void onCompleted() {
      if (ranking != null) {
        result.complete(ranking);
      } else {
        result.completeExceptionally(
            new LycheeException(Status.Code.INTERNAL, "RerankStream completed without a ranking message"));
      }
      wake();
    }

    private void wake() {
      synchronized (readyLock) {
        readyLock.notifyAll();
      }
    }
  }

  // ---------------------------------------------------------------------------------------------

  private static <S extends io.grpc.stub.AbstractStub<S>> S withDeadline(S stub, Duration d) {
    return d == null ? stub : stub.withDeadlineAfter(d.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** Shuts the channel down (if this client created it), waiting up to 5 s for calls in flight. */
  @Override
  public void close() {
    if (!ownsChannel) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
        channel.awaitTermination(1, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /**
   * The gRPC service config the client installs: a retry policy on UNAVAILABLE for every method of
   * {@code lychee.v1.RerankService}, and {@code round_robin} when asked for. Numbers are Doubles, as
   * gRPC's JSON parser expects.
   */
  static Map<String, Object> serviceConfig(
      int maxAttempts, Duration initialBackoff, Duration maxBackoff, double backoffMultiplier, String lbPolicy) {
    return serviceConfig(maxAttempts, initialBackoff, maxBackoff, backoffMultiplier, lbPolicy, null);
  }

  /**
   * As above, plus client-side health checking of {@code healthService} when it is not null: with
   * round_robin, only replicas whose {@code grpc.health.v1} Watch reports SERVING get calls.
   */
  static Map<String, Object> serviceConfig(int maxAttempts, Duration initialBackoff, Duration maxBackoff,
      double backoffMultiplier, String lbPolicy, String healthService) {
    Map<String, Object> config = new LinkedHashMap<>();
    Map<String, Object> methodConfig = new LinkedHashMap<>();
    methodConfig.put("name", List.of(Map.of("service", SERVICE_NAME)));
    if (maxAttempts > 1) {
      Map<String, Object> retry = new LinkedHashMap<>();
      retry.put("maxAttempts", (double) maxAttempts);
      retry.put("initialBackoff", durationString(initialBackoff));
      retry.put("maxBackoff", durationString(maxBackoff));
      retry.put("backoffMultiplier", backoffMultiplier);
      retry.put("retryableStatusCodes", List.of("UNAVAILABLE"));
      methodConfig.put("retryPolicy", retry);
    }
    config.put("methodConfig", List.of(methodConfig));
    if (lbPolicy != null) {
      config.put("loadBalancingConfig", List.of(Map.of(lbPolicy, Map.of())));
    }
    if (healthService != null) {
      config.put("healthCheckConfig", Map.of("serviceName", healthService));
    }
    return config;
  }

  private static String durationString(Duration d) {
    return String.format(Locale.ROOT, "%d.%09ds", d.getSeconds(), d.getNano());
  }

  /** Builder of {@link LycheeRerankClient}. */
  public static final class Builder {
    private final String target;
    private ManagedChannel channel;
    private Duration deadline = Duration.ofSeconds(10);
    private int maxAttempts = 4;
    private Duration initialBackoff = Duration.ofMillis(100);
    private Duration maxBackoff = Duration.ofSeconds(2);
    private double backoffMultiplier = 2.0;
    private String loadBalancingPolicy; // null: round_robin for dns:///, gRPC's default otherwise
    private boolean tls;
    private File trustCertCollection;
    private File clientCertChain;
    private File clientPrivateKey;
    private String overrideAuthority;
    private int maxInboundMessageSize = 16 * 1024 * 1024;
    private String userAgent;
    private String bearerToken;
    private boolean tokenOverPlaintext;
    private String healthService = SERVICE_NAME;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder(String target) {
      this.target = target;
    }

    /** Use an existing channel; the transport options of this builder are then ignored. */
    public Builder channel(ManagedChannel channel) {
      this.channel = Objects.requireNonNull(channel, "channel");
      return this;
    }

    /** The per-call deadline (default 10 s); {@code null} for none (not recommended). */
    public Builder deadline(Duration deadline) {
      if (deadline != null && (deadline.isNegative() || deadline.isZero())) {
        throw new IllegalArgumentException("deadline must be positive: " + deadline);
      }
      this.deadline = deadline;
      return this;
    }

    /**
     * Attempts per call, the first included, when the server answers UNAVAILABLE (default 4;
     * 1 disables retries; gRPC caps it at 5).
     */
    public Builder maxAttempts(int maxAttempts) {
      if (maxAttempts < 1 || maxAttempts > 5) {
        throw new IllegalArgumentException("maxAttempts must be in [1, 5]: " + maxAttempts);
      }
      this.maxAttempts = maxAttempts;
      return this;
    }

    /** Exponential backoff between retries (defaults 100 ms, 2 s, x2; gRPC adds jitter). */
    public Builder retryBackoff(Duration initial, Duration max, double multiplier) {
      if (initial.isNegative() || initial.isZero() || max.compareTo(initial) < 0 || multiplier <= 0) {
        throw new IllegalArgumentException("invalid backoff");
      }
      this.initialBackoff = initial;
      this.maxBackoff = max;
      this.backoffMultiplier = multiplier;
      return this;
    }

    /**
     * Forces a load-balancing policy ({@code "round_robin"} or {@code "pick_first"}). By default a
     * {@code dns:///} target gets round_robin and any other target gRPC's default (pick_first).
     */
    public Builder loadBalancingPolicy(String policy) {
      this.loadBalancingPolicy = policy;
      return this;
    }

    /** TLS with the JVM's default trust store (plaintext is the default). */
    public Builder useTransportSecurity() {
      this.tls = true;
      return this;
    }

    /** TLS trusting the CA certificates in this PEM file. */
    public Builder trustCertCollection(File pemFile) {
      this.tls = true;
      this.trustCertCollection = Objects.requireNonNull(pemFile, "pemFile");
      return this;
    }

    /** Mutual TLS: the client's certificate chain and PKCS#8 private key (PEM). */
    public Builder clientCertificate(File certChainPem, File privateKeyPem) {
      this.tls = true;
      this.clientCertChain = Objects.requireNonNull(certChainPem, "certChainPem");
      this.clientPrivateKey = Objects.requireNonNull(privateKeyPem, "privateKeyPem");
      return this;
    }

    /** The authority (TLS server name) to use instead of the target's host. */
    public Builder overrideAuthority(String authority) {
      this.overrideAuthority = authority;
      return this;
    }

    /** Largest response accepted, in bytes (default 16 MiB; raise it with return_documents and images). */
    public Builder maxInboundMessageSize(int bytes) {
      if (bytes <= 0) {
        throw new IllegalArgumentException("maxInboundMessageSize must be positive");
      }
      this.maxInboundMessageSize = bytes;
      return this;
    }

    /** A user agent prefix, e.g. your service's name. */
    public Builder userAgent(String userAgent) {
      this.userAgent = userAgent;
      return this;
    }

    /**
     * Sends {@code authorization: Bearer <token>} on every call. The token travels only over TLS:
     * {@link #build()} refuses it on a plaintext channel, and on a channel passed to
     * {@link #channel(ManagedChannel)} a call without transport security fails (UNAUTHENTICATED)
     * before the token is sent, unless {@link #allowBearerTokenOverPlaintext()} is given.
     */
    public Builder bearerToken(String token) {
      this.bearerToken = BearerTokenCredentials.checkToken(token);
      return this;
    }

    /**
     * Lets {@link #bearerToken(String)} travel over plaintext. Use it only where the path cannot be
     * observed: a sidecar on loopback, a test.
     */
    public Builder allowBearerTokenOverPlaintext() {
      this.tokenOverPlaintext = true;
      return this;
    }

    /**
     * Client-side health checking under round_robin (the default for {@code dns:///} targets) asks
     * each replica's {@code grpc.health.v1} Watch for {@code serviceName} (default
     * {@code lychee.v1.RerankService}) and sends calls only to those that report SERVING: a replica
     * that is loading, draining after SIGTERM or has lost its engine worker gets no new calls.
     * {@code null} turns it off.
     */
    public Builder healthCheckService(String serviceName) {
      this.healthService = serviceName;
      return this;
    }

    /** Client interceptors for the client's own channel (tracing, metrics, headers), outermost first. */
    public Builder intercept(ClientInterceptor... interceptors) {
      this.interceptors.addAll(List.of(interceptors));
      return this;
    }

    /** The service config this builder would install (for inspection and tests). */
    Map<String, Object> serviceConfig() {
      String lb = effectiveLbPolicy();
      return LycheeRerankClient.serviceConfig(maxAttempts, initialBackoff, maxBackoff, backoffMultiplier, lb,
          "round_robin".equals(lb) ? healthService : null);
    }

    private String effectiveLbPolicy() {
      if (loadBalancingPolicy != null) {
        return loadBalancingPolicy;
      }
      return target != null && target.startsWith("dns:///") ? "round_robin" : null;
    }

    public LycheeRerankClient build() {
      CallCredentials callCredentials =
          bearerToken == null ? null : new BearerTokenCredentials(bearerToken, tokenOverPlaintext);
      if (channel != null) {
        return new LycheeRerankClient(channel, false, deadline, callCredentials);
      }
      if (target == null || target.isBlank()) {
        throw new IllegalArgumentException("target is required");
      }
      if (bearerToken != null && !tls && !tokenOverPlaintext) {
        throw new IllegalStateException("bearerToken on a plaintext channel would send the token in clear text: "
            + "use useTransportSecurity() or trustCertCollection(...), or allowBearerTokenOverPlaintext() for a "
            + "loopback sidecar or a test");
      }
      ManagedChannelBuilder<?> b = Grpc.newChannelBuilder(target, credentials())
          .defaultServiceConfig(serviceConfig())
          .enableRetry()
          .maxRetryAttempts(Math.max(5, maxAttempts))
          .maxInboundMessageSize(maxInboundMessageSize);
      if (overrideAuthority != null) {
        b.overrideAuthority(overrideAuthority);
      }
      if (userAgent != null) {
        b.userAgent(userAgent);
      }
      if (!interceptors.isEmpty()) {
        b.intercept(interceptors);
      }
      return new LycheeRerankClient(b.build(), true, deadline, callCredentials);
    }

    private ChannelCredentials credentials() {
      if (!tls) {
        return InsecureChannelCredentials.create();
      }
      TlsChannelCredentials.Builder creds = TlsChannelCredentials.newBuilder();
      try {
        if (trustCertCollection != null) {
          creds.trustManager(trustCertCollection);
        }
        if (clientCertChain != null) {
          creds.keyManager(clientCertChain, clientPrivateKey);
        }
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read TLS material", e);
      }
      return creds.build();
    }
  }

  @Override
  public String toString() {
    return "LycheeRerankClient{" + channel.authority() + ", deadline=" + deadline + "}";
  }
}
