package ai.lychee.client.failopen;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.List;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;

/** The invariant of partial results, over random lists, scored subsets and scores (ties included). */
class PartialOrderPropertyTest {
  /** A list of candidates: a score per candidate (from a small set, so ties happen) and whether it was scored. */
  record Case(float[] scores, boolean[] scored) {
    @Override
    public String toString() {
      return "scores=" + Arrays.toString(scores) + " scored=" + Arrays.toString(scored);
    }
  }

  @Provide
  Arbitrary<Case> cases() {
    Arbitrary<List<Float>> scores = Arbitraries.of(0f, 0.1f, 0.25f, 0.5f, 0.5f, 0.75f, 0.9f, 1f)
        .list().ofMinSize(0).ofMaxSize(120);
    return scores.flatMap(s -> Combinators.combine(Arbitraries.just(s),
            Arbitraries.of(true, true, false).list().ofSize(s.size()))
        .as((sc, flags) -> {
          float[] f = new float[sc.size()];
          boolean[] b = new boolean[sc.size()];
          for (int i = 0; i < f.length; i++) {
            f[i] = sc.get(i);
            b[i] = flags.get(i);
          }
          return new Case(f, b);
        }));
  }

  @Property(tries = 2000)
  void isAPermutation(@ForAll("cases") Case c) {
    int[] order = PartialOrder.of(c.scores, c.scored);
    int[] sorted = order.clone();
    Arrays.sort(sorted);
    assertArrayEquals(PartialOrder.identity(c.scores.length), sorted);
  }

  @Property(tries = 2000)
  void unscoredCandidatesKeepTheirPositions(@ForAll("cases") Case c) {
    int[] order = PartialOrder.of(c.scores, c.scored);
    for (int i = 0; i < order.length; i++) {
      if (!c.scored[i]) {
        assertEquals(i, order[i], "unscored candidate " + i + " moved");
      }
    }
  }

  @Property(tries = 2000)
  void noCandidateMovesPastOneNeverScored(@ForAll("cases") Case c) {
    int[] order = PartialOrder.of(c.scores, c.scored);
    int[] position = new int[order.length];
    for (int k = 0; k < order.length; k++) {
      position[order[k]] = k;
    }
    for (int u = 0; u < order.length; u++) {
      if (c.scored[u]) {
        continue;
      }
      for (int d = 0; d < order.length; d++) {
        // before the wall in, before it out; after it in, after it out
        assertEquals(Integer.compare(d, u), Integer.compare(position[d], position[u]),
            "candidate " + d + " crossed unscored " + u);
      }
    }
  }

  @Property(tries = 2000)
  void scoredRunsAreBestFirstAndTiesKeepIncomingOrder(@ForAll("cases") Case c) {
    int[] order = PartialOrder.of(c.scores, c.scored);
    for (int k = 0; k + 1 < order.length; k++) {
      int a = order[k];
      int b = order[k + 1];
      if (c.scored[a] && c.scored[b]) {
        assertTrue(c.scores[a] >= c.scores[b], "not best first at rank " + k);
        if (c.scores[a] == c.scores[b]) {
          assertTrue(a < b, "a tie left the incoming order at rank " + k);
        }
      }
    }
  }

  @Property(tries = 500)
  void allScoredIsTheFullRankingAndNoneScoredIsTheIncomingOrder(@ForAll("cases") Case c) {
    int n = c.scores.length;
    boolean[] all = new boolean[n];
    Arrays.fill(all, true);
    int[] full = PartialOrder.of(c.scores, all);
    Integer[] expected = new Integer[n];
    for (int i = 0; i < n; i++) {
      expected[i] = i;
    }
    Arrays.sort(expected, (x, y) -> Float.compare(c.scores[y], c.scores[x])); // stable
    assertArrayEquals(expected, Arrays.stream(full).boxed().toArray(Integer[]::new));
    assertArrayEquals(PartialOrder.identity(n), PartialOrder.of(c.scores, new boolean[n]));
  }
}
