package ai.lychee.example;

import ai.lychee.client.LycheeException;
import ai.lychee.client.LycheeInvalidArgumentException;
import ai.lychee.client.LycheeRerankClient;
import ai.lychee.client.Parts;
import ai.lychee.grpc.v1.GetModelInfoResponse;
import ai.lychee.grpc.v1.RerankRequest;
import ai.lychee.grpc.v1.RerankResponse;
import ai.lychee.grpc.v1.RerankResult;
import java.time.Duration;
import java.util.List;
import java.util.Locale;

/**
 * Reranks a few product titles against a query and prints them best first.
 *
 * <pre>
 * java ... ai.lychee.example.RerankExample [target] [query]
 *   target: host:port or dns:///service:port (default: $LYCHEE_TARGET, else 127.0.0.1:50051)
 *   query:  default "retro denim jacket"
 * </pre>
 */
public final class RerankExample {
  private RerankExample() {}

  public static void main(String[] args) {
    String target = args.length > 0 ? args[0] : envOr("LYCHEE_TARGET", "127.0.0.1:50051");
    String query = args.length > 1 ? args[1] : "retro denim jacket";
    List<String> titles = List.of(
        "Vintage washed denim jacket, oversized, 90s style",
        "Stainless steel kitchen knife set, 6 pieces",
        "Men's slim-fit blue jeans, stretch cotton",
        "Retro corduroy trucker jacket with sherpa collar",
        "Wireless noise-cancelling headphones");

    try (LycheeRerankClient client = LycheeRerankClient.newBuilder(target)
        .deadline(Duration.ofSeconds(5)) // every call; a search request usually allows ~500 ms
        .userAgent("rerank-example")
        .build()) {

      GetModelInfoResponse info = client.getModelInfo();
      System.out.printf("model %s (%s)%s%n", info.getModel(), info.getServerVersion(),
          info.getRandomWeights() ? " -- RANDOM WEIGHTS: scores are not relevance judgements" : "");

      RerankResponse response = client.rerank(RerankRequest.newBuilder()
          .setQuery(Parts.textQuery(query))
          .addAllDocuments(Parts.textDocuments(titles))
          .setInstruction("Given an e-commerce search query, rank product titles by their relevance to the user's need")
          .setTopN(0) // 0 = all
          .build());

      System.out.printf("query: %s%n", query);
      int rank = 1;
      for (RerankResult r : response.getResultsList()) {
        System.out.printf(Locale.ROOT, "%2d. %.3f %-22s %s%n", rank++, r.getScore(), r.getBand(),
            titles.get(r.getIndex()));
      }
      System.out.printf(Locale.ROOT, "server time %.1f ms, %d prompt tokens%n",
          response.getTimings().getTotalMs(), response.getUsage().getPromptTokens());
    } catch (LycheeInvalidArgumentException e) {
      System.err.println("bad request: " + e.getViolations());
      System.exit(2);
    } catch (LycheeException e) {
      System.err.println("rerank failed: " + e.getCode() + " " + e.getStatusDescription());
      System.exit(1);
    }
  }

  private static String envOr(String name, String fallback) {
    String v = System.getenv(name);
    return v == null || v.isBlank() ? fallback : v;
  }
}
