package ai.lychee.client.failopen;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ai.lychee.client.LycheeRerankClient;
import ai.lychee.client.LycheeRerankClientAccess;
import ai.lychee.client.Parts;
import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.Query;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import ai.lychee.grpc.v1.RerankServiceGrpc;
import ai.lychee.grpc.v1.RerankStreamRequest;
import ai.lychee.grpc.v1.RerankStreamResponse;
import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import com.google.rpc.RetryInfo;
import io.github.resilience4j.circuitbreaker.CircuitBreaker;
import io.github.resilience4j.circuitbreaker.CircuitBreakerConfig;
import io.grpc.Context;
import io.grpc.Contexts;
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
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.IntStream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * FailOpenReranker against an in-process fake RerankStream whose behaviour the query text picks:
 * every outcome, the budget, RetryInfo within and past the budget, the breaker's cycle and the
 * Micrometer meters. A document's text is its score.
 */
class FailOpenRerankerTest {
  /** Slack over the budget for a loaded 2-core CI machine: the call must return by budget + this. */
  static final Duration MARGIN = Duration.ofMillis(150);

  final AtomicInteger calls = new AtomicInteger();
  /** The call a Fake stream serves (to send its headers alone). */
  static final Context.Key<ServerCall<?, ?>> SERVER_CALL = Context.key("server-call");
  Server server;
  ManagedChannel channel;
  LycheeRerankClient client;

  /** The fake: the query's text picks the behaviour. */
  final class Fake extends RerankServiceGrpc.RerankServiceImplBase {
    @Override
    public StreamObserver<RerankStreamRequest> rerankStream(StreamObserver<RerankStreamResponse> out) {
      int call = calls.incrementAndGet();
      return new StreamObserver<>() {
        String mode = "";
        final List<Float> scores = new ArrayList<>();
        boolean failed;

        @Override
        public void onNext(RerankStreamRequest req) {
          if (failed) {
            return;
          }
          if (req.hasOptions()) {
            mode = req.getOptions().getQuery().getParts(0).getText();
            RuntimeException error = errorFor(mode, call);
            if (error != null) {
              failed = true;
              out.onError(error);
              return;
            }
            if (mode.startsWith("unavailable-then-")) { // gRPC's retry of the refused first attempt
              mode = "stall";
              if (req.getOptions().getQuery().getParts(0).getText().endsWith("-slow")) {
                SERVER_CALL.get().sendHeaders(new Metadata()); // taken, as a replica takes a call: then held
              }
            }
          }
          for (Document d : req.getDocumentsList()) {
            int index = scores.size();
            float score = Float.parseFloat(d.getParts(0).getText());
            scores.add(score);
            boolean emit = !mode.startsWith("stall") || (mode.startsWith("stall-after:")
                && index < Integer.parseInt(mode.substring("stall-after:".length())));
            if (emit) {
              out.onNext(RerankStreamResponse.newBuilder()
                  .setScored(RerankResult.newBuilder().setIndex(index).setScore(score)).build());
            }
          }
        }

        @Override
        public void onError(Throwable t) {}

        @Override
        public void onCompleted() {
          if (failed || mode.startsWith("stall")) {
            return; // never answers: the client's budget ends the call
          }
          RerankResponse.Builder ranking = RerankResponse.newBuilder();
          IntStream.range(0, scores.size()).boxed()
              .sorted(Comparator.comparing((Integer i) -> scores.get(i)).reversed())
              .forEach(i -> ranking.addResults(RerankResult.newBuilder().setIndex(i).setScore(scores.get(i))));
          out.onNext(RerankStreamResponse.newBuilder().setRanking(ranking).build());
          out.onCompleted();
        }
      };
    }
  }

  static RuntimeException errorFor(String mode, int call) {
    if (mode.startsWith("overloaded:")) {
      // overloaded:MS refuses the first call with RetryInfo MS, then serves
      long ms = Long.parseLong(mode.substring("overloaded:".length()));
      if (call > 1) {
        return null;
      }
      return StatusProto.toStatusRuntimeException(com.google.rpc.Status.newBuilder()
          .setCode(Code.RESOURCE_EXHAUSTED_VALUE).setMessage("queue full")
          .addDetails(Any.pack(RetryInfo.newBuilder()
              .setRetryDelay(com.google.protobuf.Duration.newBuilder().setSeconds(ms / 1000)
                  .setNanos((int) (ms % 1000) * 1_000_000)).build()))
          .build());
    }
    if (mode.startsWith("unavailable-then-") && call == 1) {
      return Status.UNAVAILABLE.withDescription("draining").asRuntimeException();
    }
    return switch (mode) {
      case "unavailable" -> Status.UNAVAILABLE.withDescription("draining").asRuntimeException();
      case "unauthenticated" -> Status.UNAUTHENTICATED.withDescription("missing bearer token").asRuntimeException();
      case "internal" -> Status.INTERNAL.withDescription("boom").asRuntimeException();
      case "invalid" -> StatusProto.toStatusRuntimeException(com.google.rpc.Status.newBuilder()
          .setCode(Code.INVALID_ARGUMENT_VALUE).setMessage("documents[1].parts[0].text: empty text")
          .addDetails(Any.pack(BadRequest.newBuilder().addFieldViolations(BadRequest.FieldViolation.newBuilder()
              .setField("documents[1].parts[0].text").setDescription("empty text")).build()))
          .build());
      default -> null;
    };
  }

  @BeforeEach
  void start() throws Exception {
    String name = InProcessServerBuilder.generateName();
    server = InProcessServerBuilder.forName(name).directExecutor()
        .addService(ServerInterceptors.intercept(new Fake(), new ServerInterceptor() {
          @Override
          public <Q, R> ServerCall.Listener<Q> interceptCall(
              ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
            return Contexts.interceptCall(Context.current().withValue(SERVER_CALL, call), call, headers, next);
          }
        }))
        .build().start();
    channel = InProcessChannelBuilder.forName(name)
        .defaultServiceConfig(LycheeRerankClientAccess.serviceConfig()).enableRetry().build();
    client = LycheeRerankClient.newBuilder(channel).build();
  }

  @AfterEach
  void stop() {
    client.close();
    channel.shutdownNow();
    server.shutdownNow();
  }

  static Query query(String mode) {
    return Parts.textQuery(mode);
  }

  /** Candidates whose texts are these scores. */
  static List<Document> docs(float... scores) {
    List<Document> out = new ArrayList<>();
    for (int i = 0; i < scores.length; i++) {
      out.add(Parts.textDocument("d" + i, Float.toString(scores[i])));
    }
    return out;
  }

  static final float[] TEN = {0.1f, 0.9f, 0.3f, 0.8f, 0.5f, 0.2f, 0.7f, 0.4f, 0.6f, 0.0f};

  FailOpenReranker reranker() {
    return FailOpenReranker.newBuilder(client).budget(Duration.ofMillis(300)).chunkSize(3).build();
  }

  static void assertWithinBudget(FailOpenResult r, Duration budget) {
    assertTrue(r.elapsed().compareTo(budget.plus(MARGIN)) <= 0, "took " + r.elapsed() + " over " + budget);
  }

  @Test
  void rerankedInTimeServesTheRanking() {
    FailOpenResult r = reranker().rerank(query("fast"), docs(TEN));
    assertEquals(Outcome.RERANKED, r.outcome());
    assertArrayEquals(new int[] {1, 3, 6, 8, 4, 7, 2, 5, 0, 9}, r.order());
    assertEquals(10, r.scoredCount());
    assertEquals(0.9, r.score(1).getAsDouble(), 1e-6);
    assertTrue(r.response().isPresent());
    assertFalse(r.fellBack());
    assertEquals(List.of("d1", "d3"), r.apply(docs(TEN)).subList(0, 2).stream().map(Document::getId).toList());
  }

  @Test
  void budgetSpentMidListServesAPartialOrderWithinTheBudget() {
    FailOpenResult r = reranker().rerank(query("stall-after:5"), docs(TEN));
    assertEquals(Outcome.PARTIAL, r.outcome());
    assertEquals(5, r.scoredCount());
    // The first five are sorted among their positions; the unscored rest keep theirs.
    assertArrayEquals(new int[] {1, 3, 4, 2, 0, 5, 6, 7, 8, 9}, r.order());
    assertTrue(r.score(7).isEmpty());
    assertWithinBudget(r, Duration.ofMillis(300));
    assertTrue(r.elapsed().compareTo(Duration.ofMillis(290)) >= 0, "returned before the budget: " + r.elapsed());
  }

  @Test
  void nothingScoredInTimeFallsBackWithDeadline() {
    FailOpenResult r = reranker().rerank(query("stall"), docs(TEN));
    assertEquals(Outcome.DEADLINE, r.outcome());
    assertArrayEquals(PartialOrder.identity(10), r.order());
    assertWithinBudget(r, Duration.ofMillis(300));
  }

  @Test
  void errorsFallBackWithTheirReason() {
    FailOpenReranker fo = reranker();
    assertEquals(Outcome.UNAUTHENTICATED, fo.rerank(query("unauthenticated"), docs(TEN)).outcome());
    assertEquals(Outcome.INVALID, fo.rerank(query("invalid"), docs(TEN)).outcome());
    FailOpenResult internal = fo.rerank(query("internal"), docs(TEN));
    assertEquals(Outcome.FAILED, internal.outcome());
    assertEquals(Status.Code.INTERNAL, internal.error().orElseThrow().getCode());
    assertArrayEquals(PartialOrder.identity(10), internal.order());
  }

  @Test
  void unavailableEverywhereFallsBackAsUnavailableWithinTheBudget() {
    FailOpenResult r = reranker().rerank(query("unavailable"), docs(TEN));
    assertEquals(Outcome.UNAVAILABLE, r.outcome(), r.toString());
    assertWithinBudget(r, Duration.ofMillis(300));
  }

  /**
   * gRPC retries the refused first attempt; the budget ends while the retry is held, so the retry's
   * close (CANCELLED, our own) comes after the refusal, every time. A retry no replica took leaves
   * the refusal's UNAVAILABLE; one a replica took (sent its headers) and held is DEADLINE.
   */
  @ParameterizedTest
  @CsvSource({"unavailable-then-silent, UNAVAILABLE", "unavailable-then-slow, DEADLINE"})
  void aRetryHeldPastTheBudgetIsUnavailableUnlessAReplicaTookIt(String mode, Outcome expected) {
    FailOpenResult r = reranker().rerank(query(mode), docs(TEN));
    assertEquals(expected, r.outcome(), r.toString());
    assertEquals(2, calls.get());
    assertWithinBudget(r, Duration.ofMillis(300));
  }

  @Test
  void retryInfoThatFitsTheBudgetIsHonoured() {
    FailOpenResult r = reranker().rerank(query("overloaded:60"), docs(TEN), Duration.ofMillis(600));
    assertEquals(Outcome.RERANKED, r.outcome(), r.toString());
    assertEquals(2, r.attempts());
    assertTrue(r.elapsed().toMillis() >= 60, "did not wait the RetryInfo delay: " + r.elapsed());
  }

  @Test
  void retryInfoPastTheBudgetFallsBackAtOnce() {
    FailOpenResult r = reranker().rerank(query("overloaded:1500"), docs(TEN), Duration.ofMillis(300));
    assertEquals(Outcome.OVERLOADED, r.outcome());
    assertEquals(1, r.attempts());
    assertEquals(1, calls.get());
    assertTrue(r.elapsed().toMillis() < 150, "waited although the retry could not fit: " + r.elapsed());
  }

  @Test
  void breakerOpensOnFailuresThenProbesAndCloses() throws Exception {
    CircuitBreaker breaker = CircuitBreaker.of("test", CircuitBreakerConfig.custom()
        .slidingWindowSize(4).minimumNumberOfCalls(3).failureRateThreshold(50)
        .waitDurationInOpenState(Duration.ofMillis(300)).permittedNumberOfCallsInHalfOpenState(1).build());
    SimpleMeterRegistry registry = new SimpleMeterRegistry();
    FailOpenReranker fo = FailOpenReranker.newBuilder(client).budget(Duration.ofMillis(300))
        .circuitBreaker(breaker).listener(new MicrometerFailOpenMetrics(registry).bind(breaker)).build();

    for (int i = 0; i < 3; i++) {
      fo.rerank(query("internal"), docs(TEN));
    }
    assertEquals(CircuitBreaker.State.OPEN, breaker.getState());
    int before = calls.get();
    List<Document> candidates = docs(TEN);
    long[] micros = new long[20];
    for (int i = 0; i < micros.length; i++) {
      long t0 = System.nanoTime();
      FailOpenResult open = fo.rerank(query("fast"), candidates);
      micros[i] = (System.nanoTime() - t0) / 1000;
      assertEquals(Outcome.CIRCUIT_OPEN, open.outcome());
      assertEquals(0, open.attempts());
      assertArrayEquals(PartialOrder.identity(10), open.order());
    }
    assertEquals(before, calls.get(), "an open circuit must not call the server");
    java.util.Arrays.sort(micros);
    // The first call loads classes; the median is what a search pays while the reranker is down.
    assertTrue(micros[micros.length / 2] < 1_000, "an open circuit took " + micros[micros.length / 2] + " us");

    Thread.sleep(350); // past waitDurationInOpenState: the next call probes
    FailOpenResult probe = fo.rerank(query("fast"), docs(TEN));
    assertEquals(Outcome.RERANKED, probe.outcome());
    assertEquals(CircuitBreaker.State.CLOSED, breaker.getState());

    assertEquals(3.0, registry.get("lychee.rerank.failopen.calls").tag("outcome", "failed").counter().count());
    assertEquals(20.0, registry.get("lychee.rerank.failopen.calls").tag("outcome", "circuit_open").counter().count());
    assertEquals(1.0, registry.get("lychee.rerank.failopen.calls").tag("outcome", "reranked").counter().count());
    assertEquals(1.0, registry.get("lychee.rerank.failopen.circuit.state").tag("state", "closed").gauge().value());
    assertEquals(0.0, registry.get("lychee.rerank.failopen.circuit.state").tag("state", "open").gauge().value());
  }

  @Test
  void invalidRequestsDoNotCountAgainstTheReranker() {
    FailOpenReranker fo = reranker();
    for (int i = 0; i < 10; i++) {
      assertEquals(Outcome.INVALID, fo.rerank(query("invalid"), docs(TEN)).outcome());
    }
    assertEquals(CircuitBreaker.State.CLOSED, fo.circuitBreaker().getState());
    assertEquals(0, fo.circuitBreaker().getMetrics().getNumberOfFailedCalls());
  }

  @Test
  void aThrowingListenerNeverBreaksTheSearch() {
    FailOpenReranker fo = FailOpenReranker.newBuilder(client).listener(r -> {
      throw new IllegalStateException("dashboard down");
    }).build();
    assertEquals(Outcome.RERANKED, fo.rerank(query("fast"), docs(TEN)).outcome());
  }

  @Test
  void noCandidatesNeedNoCall() {
    FailOpenResult r = reranker().rerank(query("fast"), List.of());
    assertEquals(Outcome.RERANKED, r.outcome());
    assertEquals(0, r.order().length);
    assertEquals(0, calls.get());
  }
}
