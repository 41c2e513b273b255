package ai.lychee.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.GetModelInfoRequest;
import ai.lychee.grpc.v1.GetModelInfoResponse;
import ai.lychee.grpc.v1.RerankRequest;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import ai.lychee.grpc.v1.RerankServiceGrpc;
import ai.lychee.grpc.v1.RerankStreamRequest;
import ai.lychee.grpc.v1.RerankStreamResponse;
import ai.lychee.grpc.v1.StreamOptions;
import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Client behaviour against an in-JVM fake RerankService (no model): retry policy, error mapping,
 * load-balancing config, deadline, and the streaming helper's plumbing.
 */
class LycheeRerankClientTest {
  private static final AtomicInteger ATTEMPTS = new AtomicInteger();
  private static Server server;
  private static int port;

  /** Behaviour is picked by the request's instruction. */
  static final class FakeService extends RerankServiceGrpc.RerankServiceImplBase {
    @Override
    public void rerank(RerankRequest req, StreamObserver<RerankResponse> out) {
      int attempt = ATTEMPTS.incrementAndGet();
      switch (req.getInstruction()) {
        case "unavailable-twice" -> {
          if (attempt <= 2) {
            out.onError(Status.UNAVAILABLE.withDescription("loading").asRuntimeException());
            return;
          }
        }
        case "unavailable-always" -> {
          out.onError(Status.UNAVAILABLE.withDescription("draining").asRuntimeException());
          return;
        }
        case "internal" -> {
          out.onError(Status.INTERNAL.withDescription("boom").asRuntimeException());
          return;
        }
        case "invalid" -> {
          com.google.rpc.Status st = com.google.rpc.Status.newBuilder()
              .setCode(Code.INVALID_ARGUMENT_VALUE)
              .setMessage("documents[1].parts[0].text: empty text")
              .addDetails(Any.pack(BadRequest.newBuilder()
                  .addFieldViolations(BadRequest.FieldViolation.newBuilder()
                      .setField("documents[1].parts[0].text").setDescription("empty text"))
                  .build()))
              .build();
          out.onError(StatusProto.toStatusRuntimeException(st));
          return;
        }
        case "slow" -> {
          try {
            Thread.sleep(2000);
          } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
          }
        }
        default -> { }
      }
      RerankResponse.Builder resp = RerankResponse.newBuilder().setModel("fake");
      for (int i = 0; i < req.getDocumentsCount(); i++) {
        resp.addResults(result(i, req.getDocuments(i)));
      }
      out.onNext(sorted(resp.build()));
      out.onCompleted();
    }

    @Override
    public StreamObserver<RerankStreamRequest> rerankStream(StreamObserver<RerankStreamResponse> out) {
      return new StreamObserver<>() {
        final List<RerankResult> results = new ArrayList<>();
        boolean first = true;

        @Override
        public void onNext(RerankStreamRequest req) {
          if (first != req.hasOptions()) {
            out.onError(Status.INVALID_ARGUMENT.withDescription("options only on first").asRuntimeException());
            return;
          }
          first = false;
          for (Document d : req.getDocumentsList()) {
            RerankResult r = result(results.size(), d);
            results.add(r);
            out.onNext(RerankStreamResponse.newBuilder().setScored(r).build());
          }
        }

        @Override
        public void onError(Throwable t) { }

        @Override
        public void onCompleted() {
          out.onNext(RerankStreamResponse.newBuilder()
              .setRanking(sorted(RerankResponse.newBuilder().addAllResults(results).setModel("fake").build()))
              .build());
          out.onCompleted();
        }
      };
    }

    @Override
    public void getModelInfo(GetModelInfoRequest req, StreamObserver<GetModelInfoResponse> out) {
      out.onNext(GetModelInfoResponse.newBuilder().setModel("fake").setRandomWeights(true).build());
      out.onCompleted();
    }

    private static RerankResult result(int index, Document d) {
      float score = (float) ((d.getId().hashCode() & 0xffff) / 65535.0);
      return RerankResult.newBuilder().setIndex(index).setId(d.getId()).setScore(score).build();
    }

    private static RerankResponse sorted(RerankResponse r) {
      List<RerankResult> list = new ArrayList<>(r.getResultsList());
      list.sort(Comparator.comparingDouble(RerankResult::getScore).reversed());
      return r.toBuilder().clearResults().addAllResults(list).build();
    }
  }

  @BeforeAll
  static void startServer() throws Exception {
    server = Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create())
        .addService(new FakeService())
        .build()
        .start();
    port = server.getPort();
  }

  @AfterAll
  static void stopServer() throws Exception {
    server.shutdownNow().awaitTermination();
  }

  @BeforeEach
  void reset() {
    ATTEMPTS.set(0);
  }

  private static LycheeRerankClient client() {
    return LycheeRerankClient.newBuilder("127.0.0.1:" + port)
        .deadline(Duration.ofSeconds(5))
        .retryBackoff(Duration.ofMillis(10), Duration.ofMillis(50), 2.0)
        .build();
  }

  private static RerankRequest request(String instruction) {
    return RerankRequest.newBuilder()
        .setQuery(Parts.textQuery("q"))
        .addDocuments(Parts.textDocument("a", "x"))
        .addDocuments(Parts.textDocument("b", "y"))
        .setInstruction(instruction)
        .build();
  }

  @Test
  void retriesUnavailableThroughServiceConfig() {
    try (LycheeRerankClient c = client()) {
      RerankResponse r = c.rerank(request("unavailable-twice"));
      assertEquals(2, r.getResultsCount());
      assertEquals(3, ATTEMPTS.get());
    }
  }

  @Test
  void givesUpAfterMaxAttempts() {
    try (LycheeRerankClient c = LycheeRerankClient.newBuilder("127.0.0.1:" + port)
        .maxAttempts(3)
        .retryBackoff(Duration.ofMillis(10), Duration.ofMillis(20), 1.0)
        .build()) {
      LycheeException e = assertThrows(LycheeException.class, () -> c.rerank(request("unavailable-always")));
      assertEquals(Status.Code.UNAVAILABLE, e.getCode());
      assertTrue(e.isRetryable());
      assertEquals(3, ATTEMPTS.get());
    }
  }

  @Test
  void invalidArgumentIsNotRetriedAndCarriesViolations() {
    try (LycheeRerankClient c = client()) {
      LycheeInvalidArgumentException e =
          assertThrows(LycheeInvalidArgumentException.class, () -> c.rerank(request("invalid")));
      assertEquals(Status.Code.INVALID_ARGUMENT, e.getCode());
      assertEquals(List.of(new FieldViolation("documents[1].parts[0].text", "empty text")), e.getViolations());
      assertTrue(e.hasViolation("documents[1].parts[0].text"));
      assertEquals(1, ATTEMPTS.get());
    }
  }

  @Test
  void otherErrorsAreLycheeExceptionsWithTheCode() {
    try (LycheeRerankClient c = client()) {
      LycheeException e = assertThrows(LycheeException.class, () -> c.rerank(request("internal")));
      assertFalse(e instanceof LycheeInvalidArgumentException);
      assertEquals(Status.Code.INTERNAL, e.getCode());
      assertEquals("boom", e.getStatusDescription());
      assertFalse(e.isRetryable());
      assertEquals(1, ATTEMPTS.get());
    }
  }

  @Test
  void deadlineIsApplied() {
    try (LycheeRerankClient c = client()) {
      LycheeException e = assertThrows(LycheeException.class,
          () -> c.rerank(request("slow"), Duration.ofMillis(100)));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getCode());
    }
  }

  @Test
  void asyncRerankMapsErrors() throws Exception {
    try (LycheeRerankClient c = client()) {
      assertEquals(2, c.rerankAsync(request("")).get().getResultsCount());
      var ex = assertThrows(java.util.concurrent.ExecutionException.class,
          () -> c.rerankAsync(request("invalid")).get());
      assertInstanceOf(LycheeInvalidArgumentException.class, ex.getCause());
    }
  }

  @Test
  void dnsTargetGetsRoundRobinAndWorks() {
    Map<String, Object> cfg = LycheeRerankClient.newBuilder("dns:///localhost:" + port).serviceConfig();
    assertEquals(List.of(Map.of("round_robin", Map.of())), cfg.get("loadBalancingConfig"));
    assertFalse(LycheeRerankClient.newBuilder("localhost:" + port).serviceConfig().containsKey("loadBalancingConfig"));
    // round_robin comes with client-side health checking of the rerank service, unless turned off.
    assertEquals(Map.of("serviceName", "lychee.v1.RerankService"), cfg.get("healthCheckConfig"));
    assertFalse(LycheeRerankClient.newBuilder("localhost:" + port).serviceConfig().containsKey("healthCheckConfig"));
    assertFalse(LycheeRerankClient.newBuilder("dns:///localhost:" + port).healthCheckService(null).serviceConfig()
        .containsKey("healthCheckConfig"));
    try (LycheeRerankClient c = LycheeRerankClient.newBuilder("dns:///localhost:" + port).build()) {
      assertEquals("fake", c.getModelInfo().getModel());
      assertEquals(2, c.rerank(request("unavailable-twice")).getResultsCount());
    }
  }

  @Test
  void serviceConfigRetriesOnlyUnavailable() {
    Map<String, Object> cfg = LycheeRerankClient.newBuilder("x:1").maxAttempts(5).serviceConfig();
    @SuppressWarnings("unchecked")
    Map<String, Object> mc = ((List<Map<String, Object>>) cfg.get("methodConfig")).get(0);
    @SuppressWarnings("unchecked")
    Map<String, Object> retry = (Map<String, Object>) mc.get("retryPolicy");
    assertEquals(5.0, retry.get("maxAttempts"));
    assertEquals(List.of("UNAVAILABLE"), retry.get("retryableStatusCodes"));
    assertEquals(List.of(Map.of("service", "lychee.v1.RerankService")), mc.get("name"));
    assertFalse(((Map<?, ?>) ((List<?>) LycheeRerankClient.newBuilder("x:1").maxAttempts(1)
        .serviceConfig().get("methodConfig")).get(0)).containsKey("retryPolicy"));
  }

  @Test
  void streamHelperSendsChunksAndReturnsRanking() {
    List<Document> docs = new ArrayList<>();
    for (int i = 0; i < 25; i++) {
      docs.add(Parts.textDocument("d" + i, "t" + i));
    }
    List<RerankResult> scored = new ArrayList<>();
    try (LycheeRerankClient c = client()) {
      RerankResponse ranking = c.rerankStream(
          StreamOptions.newBuilder().setQuery(Parts.textQuery("q")).build(), docs, 10, scored::add);
      assertEquals(25, scored.size());
      assertEquals(25, ranking.getResultsCount());
      for (int i = 0; i < 25; i++) {
        assertEquals(i, scored.get(i).getIndex());
        assertEquals("d" + i, scored.get(i).getId());
      }
    }
  }

  @Test
  void streamListenerFailureCancelsTheCall() {
    List<Document> docs = List.of(Parts.textDocument("a", "x"), Parts.textDocument("b", "y"));
    try (LycheeRerankClient c = client()) {
      LycheeException e = assertThrows(LycheeException.class, () -> c.rerankStream(
          StreamOptions.newBuilder().setQuery(Parts.textQuery("q")).build(), docs, 1,
          r -> {
            throw new IllegalStateException("listener bug");
          }));
      assertEquals(Status.Code.CANCELLED, e.getCode());
      assertInstanceOf(IllegalStateException.class, e.getCause());
    }
  }

  @Test
  void fromMapsPlainThrowables() {
    LycheeException e = LycheeException.from(new RuntimeException("x"));
    assertEquals(Status.Code.UNKNOWN, e.getCode());
    assertTrue(LycheeException.from(Status.INVALID_ARGUMENT.asRuntimeException())
        instanceof LycheeInvalidArgumentException);
  }
}
