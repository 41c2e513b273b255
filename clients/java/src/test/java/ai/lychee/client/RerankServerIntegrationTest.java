package ai.lychee.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import ai.lychee.grpc.v1.BandThresholds;
import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.GetModelInfoResponse;
import ai.lychee.grpc.v1.Part;
import ai.lychee.grpc.v1.Query;
import ai.lychee.grpc.v1.RelevanceBand;
import ai.lychee.grpc.v1.RerankRequest;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import ai.lychee.grpc.v1.RerankStreamRequest;
import ai.lychee.grpc.v1.RerankStreamResponse;
import ai.lychee.grpc.v1.StreamOptions;
import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import java.awt.Color;
import java.awt.Graphics2D;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;

/**
 * End to end against the real Python server on the tiny random-weight model (one server for the
 * whole class). Skip with {@code -Dlychee.skipServerTests=true}.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class RerankServerIntegrationTest {
  private LycheeServerProcess server;
  private LycheeRerankClient client;
  private GetModelInfoResponse info;

  @BeforeAll
  void startServer() throws Exception {
    Assumptions.assumeFalse(Boolean.getBoolean("lychee.skipServerTests"), "lychee.skipServerTests set");
    server = LycheeServerProcess.start();
    client = LycheeRerankClient.newBuilder(server.target())
        .deadline(Duration.ofSeconds(60)) // CPU, two cores: generous
        .build();
    info = client.getModelInfo();
  }

  @AfterAll
  void stopServer() throws Exception {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.close();
    }
  }

  // --- helpers ---------------------------------------------------------------------------------

  static byte[] png(Color background, Color shape, int size) {
    BufferedImage img = new BufferedImage(size, size, BufferedImage.TYPE_INT_RGB);
    Graphics2D g = img.createGraphics();
    try {
      g.setColor(background);
      g.fillRect(0, 0, size, size);
      g.setColor(shape);
      g.fillOval(size / 4, size / 4, size / 2, size / 2);
    } finally {
      g.dispose();
    }
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    try {
      assertTrue(ImageIO.write(img, "png", out));
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return out.toByteArray();
  }

  private static List<Document> titles(int n) {
    List<Document> docs = new ArrayList<>(n);
    for (int i = 0; i < n; i++) {
      docs.add(Parts.textDocument("sku-" + i, "Product " + i + ": cotton t-shirt, size " + (i % 5 + 1)
          + ", colour " + List.of("red", "blue", "green", "black").get(i % 4)));
    }
    return docs;
  }

  /** Checks the invariants of any ranking of {@code n} request documents (top_n = 0). */
  private void assertRanking(RerankResponse r, int n) {
    assertEquals(n, r.getResultsCount(), "one result per document");
    assertFalse(r.getModel().isEmpty(), "model set on the response");
    Set<Integer> indices = new HashSet<>();
    float previous = Float.POSITIVE_INFINITY;
    for (RerankResult res : r.getResultsList()) {
      assertTrue(indices.add(res.getIndex()), "duplicate index " + res.getIndex());
      assertTrue(res.getIndex() < n, "index in range: " + res.getIndex());
      assertTrue(res.getScore() <= previous, "sorted by score, best first: " + r.getResultsList());
      previous = res.getScore();
      assertResult(res);
    }
  }

  /** Score in [0,1], score = sigmoid(logit), band from the server's thresholds. */
  private void assertResult(RerankResult res) {
    float s = res.getScore();
    assertTrue(s >= 0f && s <= 1f, "score in [0,1]: " + s);
    double sigmoid = 1.0 / (1.0 + Math.exp(-res.getLogit()));
    assertEquals(sigmoid, s, 1e-3, "score = sigmoid(logit) for " + res);
    BandThresholds t = info.getBandThresholds();
    RelevanceBand expected = s >= t.getStrong() ? RelevanceBand.RELEVANCE_BAND_STRONG
        : s >= t.getMedium() ? RelevanceBand.RELEVANCE_BAND_MEDIUM : RelevanceBand.RELEVANCE_BAND_WEAK;
    assertEquals(expected, res.getBand(), "band for score " + s + " with thresholds " + t);
  }

  private static LycheeInvalidArgumentException assertInvalid(Runnable call) {
    LycheeInvalidArgumentException e = assertThrows(LycheeInvalidArgumentException.class, call::run);
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getCode());
    assertFalse(e.getViolations().isEmpty(), "BadRequest field violations present: " + e);
    return e;
  }

  // --- tests -----------------------------------------------------------------------------------

  @Test
  void modelInfo() {
    assertFalse(info.getModel().isEmpty(), "model");
    assertTrue(info.getRandomWeights(), "tiny model declares random weights");
    assertTrue(info.getBandThresholds().getStrong() > info.getBandThresholds().getMedium(),
        "band thresholds: " + info.getBandThresholds());
    assertTrue(info.getLimits().getMaxDocumentsPerRequest() >= 100, "limits: " + info.getLimits());
    assertFalse(info.getDefaultInstruction().isEmpty(), "default instruction");
  }

  @Test
  void rerankTextTitles() {
    List<String> titles = List.of("Vintage washed denim jacket", "Kitchen knife set", "Slim-fit blue jeans",
        "Retro corduroy jacket", "Wireless headphones");
    RerankResponse r = client.rerankTexts("retro denim jacket", titles);
    assertRanking(r, titles.size());
    for (RerankResult res : r.getResultsList()) {
      assertEquals("", res.getId());
      assertFalse(res.hasDocument(), "no document unless asked");
    }
    assertTrue(r.getUsage().getPromptTokens() > 0, "usage: " + r.getUsage());
    assertEquals(0, r.getUsage().getImages());
    assertTrue(r.getTimings().getTotalMs() > 0, "timings: " + r.getTimings());
  }

  @Test
  void topNIdsAndReturnDocuments() {
    List<Document> docs = titles(6);
    RerankRequest full = RerankRequest.newBuilder()
        .setQuery(Parts.textQuery("black t-shirt"))
        .addAllDocuments(docs)
        .setInstruction("Given an e-commerce search query, rank product titles by their relevance to the user's need")
        .build();
    RerankResponse r = client.rerank(full.toBuilder().setTopN(2).setReturnDocuments(true).build());
    assertEquals(2, r.getResultsCount(), "top_n = 2");
    for (RerankResult res : r.getResultsList()) {
      assertEquals("sku-" + res.getIndex(), res.getId(), "id echoed");
      assertEquals(docs.get(res.getIndex()), res.getDocument(), "document echoed");
      assertResult(res);
    }

    // The top 2 are the best 2 of the full ranking (same scores, up to batching noise).
    RerankResponse all = client.rerank(full);
    assertRanking(all, docs.size());
    for (int i = 0; i < 2; i++) {
      assertEquals(all.getResults(i).getScore(), r.getResults(i).getScore(), 1e-3, "rank " + i);
    }
  }

  @Test
  void rerankImageDocuments() {
    List<Document> docs = List.of(
        Parts.imageDocument("red", png(Color.RED, Color.WHITE, 64)),
        Parts.imageDocument("blue", png(Color.BLUE, Color.YELLOW, 96)),
        Parts.imageDocument("green", png(Color.GREEN, Color.BLACK, 48)));
    RerankResponse r = client.rerank(Parts.textQuery("a red round badge"), docs);
    assertRanking(r, docs.size());
    assertEquals(3, r.getUsage().getImages(), "usage.images: " + r.getUsage());
  }

  @Test
  void rerankMixedQueryAndDocuments() {
    Query query = Parts.query(Parts.image(png(Color.ORANGE, Color.DARK_GRAY, 80)), Parts.text("same sofa under 5000"));
    List<Document> docs = List.of(
        Parts.document("a", Parts.image(png(Color.ORANGE, Color.GRAY, 64)), Parts.text("Linen 3-seat sofa, 4599")),
        Parts.document("b", Parts.text("Leather armchair "), Parts.image(png(Color.BLACK, Color.WHITE, 64))),
        Parts.textDocument("c", "Oak coffee table"),
        Parts.imageDocument("d", png(Color.PINK, Color.CYAN, 64)));
    RerankResponse r = client.rerank(query, docs);
    assertRanking(r, docs.size());
    assertEquals(4, r.getUsage().getImages(), "1 query image + 3 document images: " + r.getUsage());
    for (RerankResult res : r.getResultsList()) {
      assertEquals(docs.get(res.getIndex()).getId(), res.getId());
    }
  }

  @Test
  void stream100CandidatesIn10Chunks() {
    List<Document> docs = titles(100);
    List<List<Document>> chunks = Parts.chunks(docs, 10);
    assertEquals(10, chunks.size());
    List<RerankResult> scored = Collections.synchronizedList(new ArrayList<>());
    StreamOptions options = StreamOptions.newBuilder().setQuery(Parts.textQuery("blue cotton t-shirt size 3")).build();

    RerankResponse ranking = client.rerankStream(options, chunks, scored::add);

    assertEquals(100, scored.size(), "one scored event per document");
    Map<Integer, Float> streamed = new HashMap<>();
    for (RerankResult s : scored) {
      Float before = streamed.put(s.getIndex(), s.getScore());
      assertTrue(before == null, "index scored twice: " + s.getIndex());
      assertEquals("sku-" + s.getIndex(), s.getId(), "index = arrival order, id echoed");
      assertResult(s);
    }
    assertEquals(100, streamed.size(), "100 distinct indices");
    assertRanking(ranking, 100);
    for (RerankResult res : ranking.getResultsList()) {
      assertEquals(streamed.get(res.getIndex()), res.getScore(), 0f, "final score = streamed score, index " + res.getIndex());
      assertEquals("sku-" + res.getIndex(), res.getId());
    }
  }

  @Test
  void streamLowLevelWithDocumentsInFirstMessageAndTopN() throws Exception {
    List<Document> docs = titles(20);
    List<RerankResult> scored = Collections.synchronizedList(new ArrayList<>());
    CompletableFuture<RerankResponse> done = new CompletableFuture<>();
    StreamObserver<RerankStreamRequest> requests = client.rerankStream(new StreamObserver<>() {
      RerankResponse ranking;

      @Override
      public void onNext(RerankStreamResponse value) {
        switch (value.getEventCase()) {
          case SCORED -> {
            if (ranking != null) {
              done.completeExceptionally(new AssertionError("scored after ranking"));
            }
            scored.add(value.getScored());
          }
          case RANKING -> ranking = value.getRanking();
          default -> done.completeExceptionally(new AssertionError("empty event"));
        }
      }

      @Override
      public void onError(Throwable t) {
        done.completeExceptionally(LycheeException.from(t));
      }

      @Override
      public void onCompleted() {
        done.complete(ranking);
      }
    });
    requests.onNext(RerankStreamRequest.newBuilder()
        .setOptions(StreamOptions.newBuilder().setQuery(Parts.textQuery("green t-shirt")).setTopN(5))
        .addAllDocuments(docs.subList(0, 12))
        .build());
    requests.onNext(RerankStreamRequest.newBuilder().addAllDocuments(docs.subList(12, 20)).build());
    requests.onCompleted();
    RerankResponse ranking = done.get(60, TimeUnit.SECONDS);
    assertNotNull(ranking, "a ranking message before completion");
    assertEquals(20, scored.size(), "every document scored, top_n only trims the ranking");
    assertEquals(5, ranking.getResultsCount(), "top_n = 5 applied to the ranking");
    List<Float> best = scored.stream().map(RerankResult::getScore).sorted(Collections.reverseOrder()).toList();
    for (int i = 0; i < 5; i++) {
      assertEquals(best.get(i), ranking.getResults(i).getScore(), 0f, "ranking = best 5 of the streamed scores");
    }
  }

  @Test
  void emptyTextIsInvalidArgumentWithFieldPath() {
    RerankRequest req = RerankRequest.newBuilder()
        .setQuery(Parts.textQuery("jacket"))
        .addDocuments(Parts.textDocument("ok", "Denim jacket"))
        .addDocuments(Parts.textDocument("bad", ""))
        .build();
    LycheeInvalidArgumentException e = assertInvalid(() -> client.rerank(req));
    assertTrue(e.hasViolation("documents[1].parts[0].text"), "violations: " + e.getViolations());
  }

  @Test
  void garbageImageIsInvalidArgumentWithFieldPath() {
    RerankRequest req = RerankRequest.newBuilder()
        .setQuery(Parts.textQuery("jacket"))
        .addDocuments(Parts.document("bad", Part.newBuilder()
            .setImage(ByteString.copyFromUtf8("this is not an image, just some bytes")).build()))
        .addDocuments(Parts.textDocument("ok", "Denim jacket"))
        .build();
    LycheeInvalidArgumentException e = assertInvalid(() -> client.rerank(req));
    assertTrue(e.hasViolation("documents[0].parts[0].image"), "violations: " + e.getViolations());
  }

  @Test
  void documentWithoutPartsIsInvalidArgument() {
    RerankRequest req = RerankRequest.newBuilder()
        .setQuery(Parts.textQuery("jacket"))
        .addDocuments(Parts.textDocument("ok", "Denim jacket"))
        .addDocuments(Parts.textDocument("ok2", "Jeans"))
        .addDocuments(Document.newBuilder().setId("empty"))
        .build();
    LycheeInvalidArgumentException e = assertInvalid(() -> client.rerank(req));
    assertTrue(e.getFields().stream().anyMatch(f -> f.startsWith("documents[2]")), "violations: " + e.getViolations());
  }

  @Test
  void streamWithoutOptionsIsInvalidArgument() {
    StreamObserverProbe probe = new StreamObserverProbe();
    StreamObserver<RerankStreamRequest> requests = client.rerankStream(probe);
    requests.onNext(RerankStreamRequest.newBuilder().addDocuments(Parts.textDocument("a", "x")).build());
    requests.onCompleted();
    LycheeException e = probe.awaitError();
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getCode(), "got " + e);
  }

  @Test
  void invalidDocumentInStreamIsInvalidArgument() {
    List<List<Document>> chunks = List.of(titles(3),
        List.of(Parts.textDocument("x", "fine"), Parts.textDocument("y", "")));
    LycheeInvalidArgumentException e = assertInvalid(() -> client.rerankStream(
        StreamOptions.newBuilder().setQuery(Parts.textQuery("q")).build(), chunks, r -> { }));
    // The contract does not say how a stream names the field; print it for the record.
    System.out.println("stream INVALID_ARGUMENT violations: " + e.getViolations());
  }

  @Test
  void deadlineIsHonoured() {
    RerankRequest req = RerankRequest.newBuilder()
        .setQuery(Parts.textQuery("t-shirt"))
        .addAllDocuments(titles(100))
        .build();
    LycheeException e = assertThrows(LycheeException.class, () -> client.rerank(req, Duration.ofMillis(1)));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getCode(), "got " + e);

    // The server is still healthy and answers the next call.
    long t0 = System.nanoTime();
    assertRanking(client.rerankTexts("t-shirt", List.of("red t-shirt", "blue mug")), 2);
    System.out.printf("call after a dropped 100-document request took %d ms%n", (System.nanoTime() - t0) / 1_000_000);
  }

  /** A response observer that records the stream's error. */
  private static final class StreamObserverProbe implements StreamObserver<RerankStreamResponse> {
    private final CompletableFuture<Throwable> error = new CompletableFuture<>();

    @Override
    public void onNext(RerankStreamResponse value) { }

    @Override
    public void onError(Throwable t) {
      error.complete(t);
    }

    @Override
    public void onCompleted() {
      error.complete(null);
    }

    LycheeException awaitError() {
      try {
        Throwable t = error.get(60, TimeUnit.SECONDS);
        if (t == null) {
          fail("stream completed without an error");
        }
        return LycheeException.from(t);
      } catch (Exception e) {
        throw new AssertionError(e);
      }
    }
  }
}
