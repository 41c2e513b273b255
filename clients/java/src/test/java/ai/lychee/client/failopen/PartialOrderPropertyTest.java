package ai.lychee.client.failopen;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.pholser.junit.quickcheck.From;
import com.pholser.junit.quickcheck.Property;
import com.pholser.junit.quickcheck.generator.GenerationStatus;
import com.pholser.junit.quickcheck.generator.Generator;
import com.pholser.junit.quickcheck.random.SourceOfRandomness;
import com.pholser.junit.quickcheck.runner.JUnitQuickcheck;
import java.util.Arrays;
import org.junit.runner.RunWith;

/** The invariant of partial results, over random lists, scored subsets and scores (ties included). */
@RunWith(JUnitQuickcheck.class)
public class PartialOrderPropertyTest {
  /** A list of candidates: a score per candidate and whether it was scored. */
  public record Case(float[] scores, boolean[] scored) {
    @Override
    public String toString() {
      return "scores=" + Arrays.toString(scores) + " scored=" + Arrays.toString(scored);
    }
  }

  /** 0-120 candidates, scores from a small set (so ties happen), two in three scored. */
  public static final class Cases extends Generator<Case> {
    private static final float[] SCORES = {0f, 0.1f, 0.25f, 0.5f, 0.75f, 0.9f, 1f};

    public Cases() {
      super(Case.class);
    }

    @Override
    public Case generate(SourceOfRandomness random, GenerationStatus status) {
      int n = random.nextInt(0, 120);
      float[] scores = new float[n];
      boolean[] scored = new boolean[n];
      for (int i = 0; i < n; i++) {
        scores[i] = SCORES[random.nextInt(0, SCORES.length - 1)];
        scored[i] = random.nextInt(0, 2) > 0;
      }
      return new Case(scores, scored);
    }
  }

  @Property(trials = 500)
  public void isAPermutation(@From(Cases.class) Case c) {
    int[] sorted = PartialOrder.of(c.scores(), c.scored()).clone();
    Arrays.sort(sorted);
    assertArrayEquals(c.toString(), PartialOrder.identity(c.scores().length), sorted);
  }

  @Property(trials = 500)
  public void noCandidateMovesPastOneNeverScored(@From(Cases.class) Case c) {
    int[] order = PartialOrder.of(c.scores(), c.scored());
    int[] position = new int[order.length];
    for (int k = 0; k < order.length; k++) {
      position[order[k]] = k;
    }
    for (int u = 0; u < order.length; u++) {
      if (c.scored()[u]) {
        continue;
      }
      assertEquals("unscored candidate " + u + " moved: " + c, u, position[u]);
      for (int d = 0; d < order.length; d++) {
        // before the wall in, before it out; after it in, after it out
        assertEquals("candidate " + d + " crossed unscored " + u + ": " + c,
            Integer.compare(d, u), Integer.compare(position[d], position[u]));
      }
    }
  }

  @Property(trials = 500)
  public void scoredNeighboursAreBestFirstAndTiesKeepIncomingOrder(@From(Cases.class) Case c) {
    int[] order = PartialOrder.of(c.scores(), c.scored());
    for (int k = 0; k + 1 < order.length; k++) {
      int a = order[k];
      int b = order[k + 1];
      if (c.scored()[a] && c.scored()[b]) {
        assertTrue("not best first at rank " + k + ": " + c, c.scores()[a] >= c.scores()[b]);
        if (c.scores()[a] == c.scores()[b]) {
          assertTrue("a tie left the incoming order at rank " + k + ": " + c, a < b);
        }
      }
    }
  }

  @Property(trials = 500)
  public void allScoredIsTheFullRankingAndNoneScoredTheIncomingOrder(@From(Cases.class) Case c) {
    int n = c.scores().length;
    boolean[] all = new boolean[n];
    Arrays.fill(all, true);
    Integer[] expected = new Integer[n];
    for (int i = 0; i < n; i++) {
      expected[i] = i;
    }
    Arrays.sort(expected, (x, y) -> Float.compare(c.scores()[y], c.scores()[x])); // stable
    assertArrayEquals(expected, Arrays.stream(PartialOrder.of(c.scores(), all)).boxed().toArray(Integer[]::new));
    assertArrayEquals(PartialOrder.identity(n), PartialOrder.of(c.scores(), new boolean[n]));
  }
}
