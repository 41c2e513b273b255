package ai.lychee.examples.search;

import ai.lychee.client.LycheeRerankClient;
import ai.lychee.client.failopen.FailOpenReranker;
import ai.lychee.client.failopen.FailOpenResult;
import ai.lychee.client.failopen.MicrometerFailOpenMetrics;
import ai.lychee.examples.search.Catalogue.LabelledQuery;
import ai.lychee.examples.search.Catalogue.Product;
import ai.lychee.grpc.v1.GetModelInfoResponse;
import io.github.resilience4j.circuitbreaker.CircuitBreaker;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.io.PrintStream;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Collectors;

/**
 * {@code SearchDemo [--catalogue DIR] [--target HOST:PORT] [--budget-ms N] [--show QUERY_ID] [--max-queries N]}:
 * indexes the catalogue of {@code lychee-grpc make-eval-data DIR}, answers each of its queries that has text with BM25's
 * top 100 reranked by the fail-open call within the budget, prints the top 10 of one query, and NDCG@10 of
 * BM25 against the served order over all of them, from the catalogue's labels.
 */
public final class SearchDemo {
  /** What a run measured. */
  public record Summary(int queries, double ndcgBm25, double ndcgServed, Map<String, Long> outcomes,
      Duration slowest) { }

  public static void main(String[] args) throws Exception {
    run(args, System.out);
  }

  public static Summary run(String[] args, PrintStream out) throws Exception {
    Path dir = Paths.get("../../.cache/eval-data");
    String target = System.getenv().getOrDefault("LYCHEE_TARGET", "127.0.0.1:50051");
    Duration budget = Duration.ofMillis(300);
    String show = null;
    int maxQueries = Integer.MAX_VALUE;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--catalogue" -> dir = Paths.get(args[++i]);
        case "--target" -> target = args[++i];
        case "--budget-ms" -> budget = Duration.ofMillis(Long.parseLong(args[++i]));
        case "--show" -> show = args[++i];
        case "--max-queries" -> maxQueries = Integer.parseInt(args[++i]);
        default -> throw new IllegalArgumentException("unknown argument " + args[i]
            + " (--catalogue DIR --target HOST:PORT --budget-ms N --show QUERY_ID --max-queries N)");
      }
    }
    Catalogue catalogue = Catalogue.load(dir);
    List<LabelledQuery> withText = catalogue.queries().stream().filter(q -> !q.text().isEmpty()).toList();
    List<LabelledQuery> queries = withText.stream().limit(maxQueries).toList();
    out.printf("catalogue %s: %d products, %d queries with text (%d image-only left out: BM25 needs words)%s%n",
        dir, catalogue.products().size(), withText.size(), catalogue.queries().size() - withText.size(),
        queries.size() < withText.size() ? ", the first " + queries.size() + " run" : "");

    SimpleMeterRegistry meters = new SimpleMeterRegistry();
    try (LycheeRerankClient client = LycheeRerankClient.newBuilder(target).build()) {
      describe(client, target, out);
      // The breaker and the meters are the caller's: shared with its dashboards.
      CircuitBreaker breaker = CircuitBreaker.of("lychee-rerank", FailOpenReranker.defaultBreakerConfig());
      FailOpenReranker reranker = FailOpenReranker.newBuilder(client).budget(budget).circuitBreaker(breaker)
          .listener(new MicrometerFailOpenMetrics(meters).bind(breaker)).build();
      out.printf("budget %d ms per search, BM25 top 100 from Lucene %s%n%n", budget.toMillis(),
          org.apache.lucene.util.Version.LATEST);
      double bm25Sum = 0;
      double servedSum = 0;
      Duration slowest = Duration.ZERO;
      try (SearchService search = new SearchService(catalogue.products(), reranker, 100)) {
        String showId = show;
        LabelledQuery shown = queries.stream().filter(q -> q.id().equals(showId)).findFirst().orElse(queries.get(0));
        for (LabelledQuery q : queries) {
          SearchService.Result r = search.search(q.text(), q.image(), budget);
          double b = Ndcg.at(10, ids(r.bm25()), q.labels());
          double s = Ndcg.at(10, ids(r.served()), q.labels());
          bm25Sum += b;
          servedSum += s;
          slowest = r.elapsed().compareTo(slowest) > 0 ? r.elapsed() : slowest;
          if (q == shown) {
            printTop(q, r, out);
          }
        }
      }
      Map<String, Long> outcomes = new TreeMap<>(meters.find("lychee.rerank.failopen.calls").counters().stream()
          .collect(Collectors.toMap(c -> c.getId().getTag("outcome"), c -> (long) c.count())));
      Summary summary = new Summary(queries.size(), bm25Sum / queries.size(), servedSum / queries.size(), outcomes,
          slowest);
      out.printf("NDCG@10 over %d queries: BM25 %.3f, served %.3f; outcomes %s; slowest search %d ms (budget %d)%n",
          summary.queries(), summary.ndcgBm25(), summary.ndcgServed(), outcomes, slowest.toMillis(),
          budget.toMillis());
      out.printf("circuit breaker %s%n", reranker.circuitBreaker().getState());
      return summary;
    }
  }

  private static void describe(LycheeRerankClient client, String target, PrintStream out) {
    try {
      GetModelInfoResponse info = client.getModelInfo();
      out.printf("reranker %s: %s%s%n", target, info.getModel(), info.getRandomWeights()
          ? " -- RANDOM weights (a test model): its scores mean nothing, and neither does the served NDCG" : "");
    } catch (RuntimeException e) {
      out.printf("reranker %s: not answering (%s); every search falls back to BM25%n", target, e.getMessage());
    }
  }

  private static void printTop(LabelledQuery q, SearchService.Result r, PrintStream out) {
    FailOpenResult rr = r.rerank();
    out.printf("%s \"%s\"%s: %s, %d/%d scored, %d ms%n", q.id(), q.text(), q.image() != null ? " + image" : "",
        rr.outcome().tag(), rr.scoredCount(), rr.size(), rr.elapsed().toMillis());
    out.printf("%4s  %-52s  %-52s%n", "rank", "BM25 (label)", "served (label, score)");
    int[] order = rr.order();
    for (int k = 0; k < Math.min(10, r.bm25().size()); k++) {
      Product b = r.bm25().get(k);
      Product s = r.served().get(k);
      String score = rr.score(order[k]).isPresent() ? String.format("%.3f", rr.score(order[k]).getAsDouble()) : "-";
      out.printf("%4d  %-52s  %-52s%n", k + 1, cell(b, q, null), cell(s, q, score));
    }
    out.println();
  }

  private static String cell(Product p, LabelledQuery q, String score) {
    String title = p.title().isEmpty() ? "(image only)" : p.title();
    String tail = " (" + q.labels().getOrDefault(p.id(), 0) + (score == null ? "" : ", " + score) + ")";
    String head = p.id() + " " + title;
    int room = 52 - tail.length();
    return (head.length() > room ? head.substring(0, room - 1) + "…" : head) + tail;
  }

  static List<String> ids(List<Product> products) {
    return products.stream().map(Product::id).toList();
  }
}
