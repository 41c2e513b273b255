package ai.lychee.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ai.lychee.grpc.v1.ExplainRequest;
import ai.lychee.grpc.v1.ExplainResponse;
import ai.lychee.grpc.v1.Fragment;
import ai.lychee.grpc.v1.FragmentSource;
import ai.lychee.grpc.v1.GetModelInfoRequest;
import ai.lychee.grpc.v1.GetModelInfoResponse;
import ai.lychee.grpc.v1.Limits;
import ai.lychee.grpc.v1.RelevanceBand;
import ai.lychee.grpc.v1.RerankRequest;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import ai.lychee.grpc.v1.RerankServiceGrpc;
import ai.lychee.grpc.v1.RerankStreamRequest;
import ai.lychee.grpc.v1.RerankStreamResponse;
import ai.lychee.grpc.v1.StreamOptions;
import ai.lychee.grpc.v1.Truncation;
import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.RetryInfo;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Bearer tokens, typed UNAUTHENTICATED and overload errors, Explain and the new request fields,
 * against an in-process fake RerankService that checks the token like the real server.
 */
class ContractAdditionsTest {
  static final String TOKEN = "s3cret";
  static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  /** The authorization header of every call ("" when absent), and the number of calls. */
  final List<String> authorizations = Collections.synchronizedList(new ArrayList<>());
  final AtomicInteger calls = new AtomicInteger();
  String serverName;
  Server server;
  ManagedChannel channel;

  /** Answers UNAUTHENTICATED unless the token is right, like the server's auth interceptor. */
  final class TokenCheck implements ServerInterceptor {
    @Override
    public <Q, R> ServerCall.Listener<Q> interceptCall(
        ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
      calls.incrementAndGet();
      String auth = headers.get(AUTHORIZATION);
      authorizations.add(auth == null ? "" : auth);
      if (!("Bearer " + TOKEN).equals(auth)) {
        call.close(Status.UNAUTHENTICATED.withDescription("missing or invalid bearer token"), new Metadata());
        return new ServerCall.Listener<>() { };
      }
      return next.startCall(call, headers);
    }
  }

  static StatusRuntime overloaded(Duration delay) {
    return new StatusRuntime(com.google.rpc.Status.newBuilder()
        .setCode(Code.RESOURCE_EXHAUSTED_VALUE)
        .setMessage("queue full")
        .addDetails(Any.pack(RetryInfo.newBuilder()
            .setRetryDelay(com.google.protobuf.Duration.newBuilder()
                .setSeconds(delay.getSeconds()).setNanos(delay.getNano()))
            .build()))
        .build());
  }

  /** A google.rpc.Status to throw from the fake. */
  record StatusRuntime(com.google.rpc.Status proto) {
    RuntimeException exception() {
      return StatusProto.toStatusRuntimeException(proto);
    }
  }

  /**
   * Echoes the new request fields so a test sees they travelled: truncation and
   * max_tokens_per_document into request_id, a set min_score drops every result.
   */
  static final class FakeService extends RerankServiceGrpc.RerankServiceImplBase {
    @Override
    public void rerank(RerankRequest req, StreamObserver<RerankResponse> out) {
      switch (req.getInstruction()) {
        case "overloaded" -> {
          out.onError(overloaded(Duration.ofMillis(1500)).exception());
          return;
        }
        case "exhausted-without-retry-info" -> {
          out.onError(Status.RESOURCE_EXHAUSTED.withDescription("another limit").asRuntimeException());
          return;
        }
        default -> { }
      }
      boolean truncate = req.getTruncation() == Truncation.TRUNCATION_END;
      RerankResponse.Builder resp = RerankResponse.newBuilder()
          .setRequestId(req.getTruncation() + "/" + req.getMaxTokensPerDocument());
      for (int i = 0; i < req.getDocumentsCount(); i++) {
        if (req.hasMinScore() && 0.5f < req.getMinScore()) {
          resp.setDroppedDocuments(resp.getDroppedDocuments() + 1);
          continue;
        }
        resp.addResults(RerankResult.newBuilder().setIndex(i).setScore(0.5f).setTruncated(truncate));
        if (truncate) {
          resp.setTruncatedDocuments(resp.getTruncatedDocuments() + 1);
        }
      }
      out.onNext(resp.build());
      out.onCompleted();
    }

    @Override
    public StreamObserver<RerankStreamRequest> rerankStream(StreamObserver<RerankStreamResponse> out) {
      return new StreamObserver<>() {
        StreamOptions options;
        int documents;

        @Override
        public void onNext(RerankStreamRequest req) {
          if (req.hasOptions()) {
            options = req.getOptions();
          }
          documents += req.getDocumentsCount();
        }

        @Override
        public void onError(Throwable t) { }

        @Override
        public void onCompleted() {
          if (options.getInstruction().equals("overloaded")) {
            out.onError(overloaded(Duration.ofMillis(250)).exception());
            return;
          }
          out.onNext(RerankStreamResponse.newBuilder().setRanking(RerankResponse.newBuilder()
              .setRequestId(options.getTruncation() + "/" + options.getMaxTokensPerDocument())
              .setDroppedDocuments(options.hasMinScore() ? documents : 0)).build());
          out.onCompleted();
        }
      };
    }

    @Override
    public void getModelInfo(GetModelInfoRequest req, StreamObserver<GetModelInfoResponse> out) {
      out.onNext(GetModelInfoResponse.newBuilder().setModel("fake").setWorkers(2)
          .setLimits(Limits.newBuilder().setMaxExplainFragments(64).setExplainGridSize(4)
              .setDefaultTruncation(Truncation.TRUNCATION_END))
          .build());
      out.onCompleted();
    }

    /** One fragment per word of the document's first text part. */
    @Override
    public void explain(ExplainRequest req, StreamObserver<ExplainResponse> out) {
      ExplainResponse.Builder resp = ExplainResponse.newBuilder()
          .setScore(0.75f).setBand(RelevanceBand.RELEVANCE_BAND_STRONG).setRequestId("explain-1");
      String text = req.getDocument().getParts(0).getText();
      int from = 0;
      for (String w : text.trim().split("\\s+")) {
        int at = text.indexOf(w, from);
        resp.addFragments(Fragment.newBuilder().setSource(FragmentSource.FRAGMENT_SOURCE_DOCUMENT)
            .setText(w).setStart(at).setEnd(at + w.length()).setAttribution(0.1f));
        from = at + w.length();
      }
      out.onNext(resp.build());
      out.onCompleted();
    }
  }

  @BeforeEach
  void start() throws Exception {
    serverName = InProcessServerBuilder.generateName();
    server = InProcessServerBuilder.forName(serverName).directExecutor()
        .addService(ServerInterceptors.intercept(new FakeService(), new TokenCheck()))
        .build().start();
    channel = InProcessChannelBuilder.forName(serverName).directExecutor().build();
  }

  @AfterEach
  void stop() throws Exception {
    channel.shutdownNow().awaitTermination(5, java.util.concurrent.TimeUnit.SECONDS);
    server.shutdownNow().awaitTermination();
  }

  LycheeRerankClient client(String token) {
    LycheeRerankClient.Builder b = LycheeRerankClient.newBuilder(channel).deadline(Duration.ofSeconds(5));
    return (token == null ? b : b.bearerToken(token)).build();
  }

  @Test
  void bearerTokenReachesTheServerOnEveryRpc() {
    try (LycheeRerankClient c = client(TOKEN)) {
      c.getModelInfo();
      c.rerankTexts("q", List.of("a"));
      c.explainText("q", "a b");
      c.rerankStream(StreamOptions.newBuilder().setQuery(Parts.textQuery("q")).build(),
          List.of(Parts.textDocument("a", "x")), 1, r -> { });
      assertEquals(Collections.nCopies(4, "Bearer " + TOKEN), authorizations);
    }
  }

  @Test
  void missingOrWrongTokenIsTypedUnauthenticated() {
    for (String token : new String[] {null, "guess"}) {
      calls.set(0);
      try (LycheeRerankClient c = client(token)) {
        LycheeUnauthenticatedException e =
            assertThrows(LycheeUnauthenticatedException.class, () -> c.rerankTexts("q", List.of("a")));
        assertEquals(Status.Code.UNAUTHENTICATED, e.getCode());
        assertEquals("missing or invalid bearer token", e.getStatusDescription());
        assertFalse(e.isRetryable());
        assertEquals(1, calls.get());
      }
    }
  }

  @Test
  void overloadedCarriesTheRetryDelay() {
    try (LycheeRerankClient c = client(TOKEN)) {
      LycheeOverloadedException e = assertThrows(LycheeOverloadedException.class,
          () -> c.rerankTexts("q", List.of("a"), RerankOptions.newBuilder().instruction("overloaded").build()));
      assertEquals(Duration.ofMillis(1500), e.retryAfter());
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.getCode());
      assertTrue(e.getMessage().contains("PT1.5S"), e.getMessage());

      LycheeOverloadedException s = assertThrows(LycheeOverloadedException.class, () -> c.rerankStream(
          RerankOptions.newBuilder().instruction("overloaded").build().toStreamOptions(Parts.textQuery("q")),
          List.of(Parts.textDocument("a", "x")), 1, r -> { }));
      assertEquals(Duration.ofMillis(250), s.retryAfter());

      LycheeException plain = assertThrows(LycheeException.class, () -> c.rerankTexts("q", List.of("a"),
          RerankOptions.newBuilder().instruction("exhausted-without-retry-info").build()));
      assertFalse(plain instanceof LycheeOverloadedException, "no RetryInfo: not an overload to wait out");
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, plain.getCode());
    }
  }

  @Test
  void newRerankFieldsRoundTrip() {
    try (LycheeRerankClient c = client(TOKEN)) {
      RerankResponse r = c.rerankTexts("q", List.of("a", "b"), RerankOptions.newBuilder()
          .truncation(Truncation.TRUNCATION_END).maxTokensPerDocument(77).build());
      assertEquals("TRUNCATION_END/77", r.getRequestId());
      assertEquals(2, r.getTruncatedDocuments());
      assertTrue(r.getResults(0).getTruncated());

      RerankResponse dropped = c.rerankTexts("q", List.of("a", "b"), RerankOptions.newBuilder().minScore(0.9f).build());
      assertEquals(0, dropped.getResultsCount());
      assertEquals(2, dropped.getDroppedDocuments());

      RerankResponse ranking = c.rerankStream(RerankOptions.newBuilder().truncation(Truncation.TRUNCATION_NONE)
              .maxTokensPerDocument(5).minScore(0.1f).build().toStreamOptions(Parts.textQuery("q")),
          List.of(Parts.textDocument("a", "x"), Parts.textDocument("b", "y"), Parts.textDocument("c", "z")), 2,
          res -> { });
      assertEquals("TRUNCATION_NONE/5", ranking.getRequestId());
      assertEquals(3, ranking.getDroppedDocuments());

      GetModelInfoResponse info = c.getModelInfo();
      assertEquals(2, info.getWorkers());
      assertEquals(64, info.getLimits().getMaxExplainFragments());
      assertEquals(Truncation.TRUNCATION_END, info.getLimits().getDefaultTruncation());
    }
  }

  @Test
  void explainRoundTrips() {
    try (LycheeRerankClient c = client(TOKEN)) {
      ExplainResponse r = c.explainText("q", "red  running shoes");
      assertEquals(0.75f, r.getScore());
      assertEquals(RelevanceBand.RELEVANCE_BAND_STRONG, r.getBand());
      assertEquals("explain-1", r.getRequestId());
      assertEquals(List.of("red", "running", "shoes"), r.getFragmentsList().stream().map(Fragment::getText).toList());
      assertEquals(5, r.getFragments(1).getStart());
      assertTrue(r.getFragmentsList().stream().allMatch(f -> f.getSource() == FragmentSource.FRAGMENT_SOURCE_DOCUMENT));
    }
  }

  @Test
  void rerankOptionsSetOnlyWhatWasAsked() {
    RerankRequest none = RerankOptions.defaults().applyTo(RerankRequest.newBuilder()).build();
    assertEquals(RerankRequest.getDefaultInstance(), none);
    assertFalse(none.hasMinScore());
    // min_score is proto3 optional: 0 set explicitly is not the same as unset.
    assertTrue(RerankOptions.newBuilder().minScore(0f).build().applyTo(RerankRequest.newBuilder()).hasMinScore());
    RerankOptions all = RerankOptions.newBuilder().instruction("i").topN(3).returnDocuments(true)
        .truncation(Truncation.TRUNCATION_END).minScore(0.25f).maxTokensPerDocument(9).build();
    assertEquals(RerankRequest.newBuilder().setInstruction("i").setTopN(3).setReturnDocuments(true)
        .setTruncation(Truncation.TRUNCATION_END).setMinScore(0.25f).setMaxTokensPerDocument(9).build(),
        all.applyTo(RerankRequest.newBuilder()).build());
    assertEquals(StreamOptions.newBuilder().setQuery(Parts.textQuery("q")).setInstruction("i").setTopN(3)
        .setReturnDocuments(true).setTruncation(Truncation.TRUNCATION_END).setMinScore(0.25f)
        .setMaxTokensPerDocument(9).build(), all.toStreamOptions(Parts.textQuery("q")));
  }

  @Test
  void badOptionsNameTheField() {
    RerankOptions.Builder b = RerankOptions.newBuilder();
    assertTrue(assertThrows(IllegalArgumentException.class, () -> b.minScore(Float.NaN)).getMessage()
        .startsWith("minScore"));
    assertTrue(assertThrows(IllegalArgumentException.class, () -> b.minScore(1.5f)).getMessage()
        .startsWith("minScore"));
    assertTrue(assertThrows(IllegalArgumentException.class, () -> b.topN(-1)).getMessage().startsWith("topN"));
    assertTrue(assertThrows(IllegalArgumentException.class, () -> b.maxTokensPerDocument(-1)).getMessage()
        .startsWith("maxTokensPerDocument"));
    assertTrue(assertThrows(IllegalArgumentException.class, () -> b.truncation(Truncation.UNRECOGNIZED))
        .getMessage().startsWith("truncation"));
    for (String bad : new String[] {"", "two words", "line\nbreak"}) {
      assertTrue(assertThrows(IllegalArgumentException.class,
          () -> LycheeRerankClient.newBuilder("x:1").bearerToken(bad)).getMessage().startsWith("bearerToken"));
    }
  }

  @Test
  void bearerTokenOverPlaintextNeedsTheOptIn() {
    IllegalStateException e = assertThrows(IllegalStateException.class,
        () -> LycheeRerankClient.newBuilder("127.0.0.1:1").bearerToken(TOKEN).build());
    assertTrue(e.getMessage().contains("allowBearerTokenOverPlaintext"), e.getMessage());
  }

  /**
   * Over a real plaintext socket: with the opt-in the token is sent, and RESOURCE_EXHAUSTED is not
   * retried by the client's own channel (only UNAVAILABLE is); without the opt-in on a caller's
   * plaintext channel the token is never sent.
   */
  @Test
  void plaintextSocketOptInAndNoOverloadRetry() throws Exception {
    Server tcp = Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create())
        .addService(ServerInterceptors.intercept(new FakeService(), new TokenCheck()))
        .build().start();
    try (LycheeRerankClient c = LycheeRerankClient.newBuilder("127.0.0.1:" + tcp.getPort())
        .bearerToken(TOKEN).allowBearerTokenOverPlaintext()
        .retryBackoff(Duration.ofMillis(10), Duration.ofMillis(50), 2.0).build()) {
      assertEquals("fake", c.getModelInfo().getModel());
      assertThrows(LycheeOverloadedException.class,
          () -> c.rerankTexts("q", List.of("a"), RerankOptions.newBuilder().instruction("overloaded").build()));
      assertEquals(2, calls.get(), "RESOURCE_EXHAUSTED must not be retried");
      assertEquals(List.of("Bearer " + TOKEN, "Bearer " + TOKEN), authorizations);

      ManagedChannel plain = Grpc.newChannelBuilder("127.0.0.1:" + tcp.getPort(),
          io.grpc.InsecureChannelCredentials.create()).build();
      try (LycheeRerankClient guarded = LycheeRerankClient.newBuilder(plain).bearerToken(TOKEN).build()) {
        LycheeUnauthenticatedException refused =
            assertThrows(LycheeUnauthenticatedException.class, guarded::getModelInfo);
        assertTrue(refused.getStatusDescription().contains("no transport security"), refused.getMessage());
        assertEquals(2, calls.get(), "the call must not reach the server");
      } finally {
        plain.shutdownNow();
      }
    } finally {
      tcp.shutdownNow().awaitTermination();
    }
  }

  @Test
  void fromMapsUnauthenticatedAndOverloaded() {
    assertInstanceOf(LycheeUnauthenticatedException.class,
        LycheeException.from(Status.UNAUTHENTICATED.asRuntimeException()));
    LycheeException e = LycheeException.from(overloaded(Duration.ofSeconds(2, 5)).exception());
    assertEquals(Duration.ofSeconds(2, 5), assertInstanceOf(LycheeOverloadedException.class, e).retryAfter());
  }
}
