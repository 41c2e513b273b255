package ai.lychee.examples.search;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ai.lychee.client.LycheeRerankClient;
import ai.lychee.client.LycheeServerProcess;
import ai.lychee.client.failopen.FailOpenReranker;
import ai.lychee.client.failopen.FailOpenResult;
import ai.lychee.client.failopen.Outcome;
import ai.lychee.examples.search.Catalogue.LabelledQuery;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;

/**
 * The search example end to end, in the three cases a search service meets: the reranker live (the
 * tiny random-weight model), stopped (BM25's order within the budget, outcome unavailable or
 * circuit open), and slowed past the budget ({@code tests/fault_server.py slow-batches}: BM25's order
 * or a partial one, within the budget).
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 240, unit = TimeUnit.SECONDS)
class SearchExampleLiveTest {
  /** Slack over the budget on a loaded 2-core CI machine. */
  static final Duration MARGIN = Duration.ofMillis(250);

  Path catalogueDir;
  Catalogue catalogue;
  List<LabelledQuery> queries;

  @BeforeAll
  void makeCatalogue() throws Exception {
    Assumptions.assumeFalse(Boolean.getBoolean("lychee.skipServerTests"), "lychee.skipServerTests set");
    catalogueDir = Paths.get("target", "catalogue").toAbsolutePath();
    if (!Files.exists(catalogueDir.resolve("data.jsonl"))) {
      Process p = new ProcessBuilder(LycheeServerProcess.cli().toString(), "make-eval-data", catalogueDir.toString())
          .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
      assertEquals(0, p.waitFor(), "lychee-grpc make-eval-data");
    }
    catalogue = Catalogue.load(catalogueDir);
    queries = catalogue.queries().stream().filter(q -> !q.text().isEmpty()).toList();
  }

  static void assertIsBm25Order(SearchService.Result r) {
    assertEquals(SearchDemo.ids(r.bm25()), SearchDemo.ids(r.served()), "served order is not BM25's");
  }

  static void assertWithin(Duration budget, FailOpenResult r) {
    assertTrue(r.elapsed().compareTo(budget.plus(MARGIN)) <= 0, "took " + r.elapsed() + ", budget " + budget);
  }

  @Test
  void liveThenStopped() throws Exception {
    LycheeServerProcess server = LycheeServerProcess.start("search", Map.of());
    String target = server.target();
    try {
      // Live: a generous budget for the tiny model on a loaded CPU; every search is reranked.
      ByteArrayOutputStream captured = new ByteArrayOutputStream();
      SearchDemo.Summary live = SearchDemo.run(new String[] {"--catalogue", catalogueDir.toString(), "--target",
          target, "--budget-ms", "30000", "--max-queries", "4"}, new PrintStream(captured, true, StandardCharsets.UTF_8));
      String out = captured.toString(StandardCharsets.UTF_8);
      System.out.println(out);
      assertEquals(Map.of("reranked", 4L), live.outcomes(), out);
      assertTrue(out.contains("RANDOM weights"), "the demo must say the scores mean nothing:\n" + out);
      assertTrue(live.ndcgBm25() >= 0 && live.ndcgBm25() <= 1 && live.ndcgServed() >= 0 && live.ndcgServed() <= 1);
      try (LycheeRerankClient client = LycheeRerankClient.newBuilder(target).build();
           SearchService search = new SearchService(catalogue.products(),
               FailOpenReranker.newBuilder(client).build(), 100)) {
        LabelledQuery q = queries.get(0);
        SearchService.Result r = search.search(q.text(), q.image(), Duration.ofSeconds(30));
        assertEquals(Outcome.RERANKED, r.rerank().outcome());
        assertEquals(100, r.bm25().size());
        assertEquals(Set.copyOf(SearchDemo.ids(r.bm25())), Set.copyOf(SearchDemo.ids(r.served())));
        for (int k = 0; k + 1 < r.served().size(); k++) { // best first
          int a = r.rerank().order()[k];
          int b = r.rerank().order()[k + 1];
          assertTrue(r.rerank().score(a).getAsDouble() >= r.rerank().score(b).getAsDouble());
        }
      }
    } finally {
      server.close();
    }

    // Stopped: the same target, nothing listening. BM25's order within the budget; after the
    // breaker's first failures, CIRCUIT_OPEN in microseconds.
    Duration budget = Duration.ofMillis(300);
    try (LycheeRerankClient client = LycheeRerankClient.newBuilder(target).build();
         SearchService search = new SearchService(catalogue.products(),
             FailOpenReranker.newBuilder(client).budget(budget).build(), 100)) {
      List<Outcome> outcomes = new ArrayList<>();
      for (int i = 0; i < 8; i++) {
        LabelledQuery q = queries.get(i % queries.size());
        SearchService.Result r = search.search(q.text(), q.image(), budget);
        assertIsBm25Order(r);
        assertWithin(budget, r.rerank());
        outcomes.add(r.rerank().outcome());
        assertTrue(Set.of(Outcome.UNAVAILABLE, Outcome.CIRCUIT_OPEN).contains(r.rerank().outcome()), outcomes.toString());
      }
      assertEquals(Outcome.UNAVAILABLE, outcomes.get(0));
      assertEquals(Outcome.CIRCUIT_OPEN, outcomes.get(outcomes.size() - 1), outcomes.toString());
      System.out.println("stopped server: " + outcomes);
    }
  }

  @Test
  void slowedPastTheBudget() throws Exception {
    // Every model batch takes 1.5 s longer: nothing can be scored within an 800 ms budget.
    List<String> slow = List.of(LycheeServerProcess.python().toString(), "-m", "tests.fault_server", "slow-batches",
        "1.5");
    LycheeServerProcess server = LycheeServerProcess.start("search-slow", Map.of(), slow);
    Duration budget = Duration.ofMillis(800);
    try (LycheeRerankClient client = LycheeRerankClient.newBuilder(server.target()).build();
         SearchService search = new SearchService(catalogue.products(),
             FailOpenReranker.newBuilder(client).budget(budget).build(), 100)) {
      List<Outcome> outcomes = new ArrayList<>();
      for (int i = 0; i < 6; i++) {
        LabelledQuery q = queries.get(i % queries.size());
        SearchService.Result r = search.search(q.text(), q.image(), budget);
        assertWithin(budget, r.rerank());
        outcomes.add(r.rerank().outcome());
        assertTrue(Set.of(Outcome.DEADLINE, Outcome.CIRCUIT_OPEN).contains(r.rerank().outcome()), outcomes.toString());
        assertIsBm25Order(r);
      }
      assertEquals(Outcome.DEADLINE, outcomes.get(0));
      System.out.println("slowed server: " + outcomes);
    } finally {
      server.close();
    }
  }
}
