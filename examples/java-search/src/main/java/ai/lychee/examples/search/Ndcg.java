package ai.lychee.examples.search;

import java.util.List;
import java.util.Map;

/** NDCG@k with linear gains (the label), as trec_eval and lychee-grpc eval compute it. */
public final class Ndcg {
  private Ndcg() {}

  /**
   * @param ranked product ids in served order
   * @param labels the query's grades by product id (absent: 0)
   */
  public static double at(int k, List<String> ranked, Map<String, Integer> labels) {
    double dcg = 0;
    for (int i = 0; i < Math.min(k, ranked.size()); i++) {
      dcg += labels.getOrDefault(ranked.get(i), 0) / log2(i + 2);
    }
    List<Integer> ideal = labels.values().stream().sorted((a, b) -> b - a).toList();
    double idcg = 0;
    for (int i = 0; i < Math.min(k, ideal.size()); i++) {
      idcg += ideal.get(i) / log2(i + 2);
    }
    return idcg == 0 ? 0 : dcg / idcg;
  }

  private static double log2(double x) {
    return Math.log(x) / Math.log(2);
  }
}
