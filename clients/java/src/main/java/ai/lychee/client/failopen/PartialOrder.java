package ai.lychee.client.failopen;

import java.util.Arrays;
import java.util.Comparator;

/**
 * The order to serve when only some candidates were scored before the budget ran out.
 *
 * <p>A candidate that was never scored keeps its position, and it is a wall: the scored candidates
 * between two walls (a maximal run of consecutive scored positions) are sorted best first among the
 * positions they held, ties in their incoming order. So no candidate moves past one that was never
 * scored, and nothing the retriever ranked high is pushed down by a score it never got. With every
 * candidate scored this is the full ranking; with none, the incoming order.
 */
public final class PartialOrder {
  private PartialOrder() {}

  /**
   * @param scores a score per candidate, in incoming order (read only where {@code scored} is true)
   * @param scored which candidates were scored
   * @return {@code order}: {@code order[k]} is the incoming index of the candidate served at rank k
   */
  public static int[] of(float[] scores, boolean[] scored) {
    if (scores.length != scored.length) {
      throw new IllegalArgumentException("scores and scored differ in length: " + scores.length + " vs " + scored.length);
    }
    int n = scores.length;
    int[] order = new int[n];
    int i = 0;
    while (i < n) {
      if (!scored[i]) {
        order[i] = i;
        i++;
        continue;
      }
      int end = i;
      while (end < n && scored[end]) {
        end++;
      }
      Integer[] run = new Integer[end - i];
      for (int k = 0; k < run.length; k++) {
        run[k] = i + k;
      }
      // Arrays.sort on objects is stable: equal scores keep the retriever's order.
      Arrays.sort(run, Comparator.comparingDouble((Integer idx) -> scores[idx]).reversed());
      for (int k = 0; k < run.length; k++) {
        order[i + k] = run[k];
      }
      i = end;
    }
    return order;
  }

  /** The incoming order, 0..n-1. */
  public static int[] identity(int n) {
    int[] order = new int[n];
    for (int i = 0; i < n; i++) {
      order[i] = i;
    }
    return order;
  }
}
