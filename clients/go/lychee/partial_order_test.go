package lychee

import (
	"slices"
	"sort"
	"testing"

	"pgregory.net/rapid"
)

// candidates draws a list with scores from a small set (so ties happen) and a
// random scored subset.
func candidates(t *rapid.T) ([]float32, []bool) {
	n := rapid.IntRange(0, 120).Draw(t, "n")
	scores := rapid.SliceOfN(rapid.SampledFrom([]float32{0, 0.1, 0.25, 0.5, 0.75, 0.9, 1}), n, n).Draw(t, "scores")
	scored := rapid.SliceOfN(rapid.SampledFrom([]bool{true, true, false}), n, n).Draw(t, "scored")
	return scores, scored
}

func TestPartialOrderIsAPermutation(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		scores, scored := candidates(t)
		order := PartialOrder(scores, scored)
		got := slices.Clone(order)
		sort.Ints(got)
		for i, v := range got {
			if v != i {
				t.Fatalf("not a permutation: %v", order)
			}
		}
	})
}

func TestPartialOrderNoCandidateMovesPastOneNeverScored(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		scores, scored := candidates(t)
		order := PartialOrder(scores, scored)
		pos := make([]int, len(order))
		for k, i := range order {
			pos[i] = k
		}
		for u := range order {
			if scored[u] {
				continue
			}
			if pos[u] != u {
				t.Fatalf("unscored candidate %d moved to %d", u, pos[u])
			}
			for d := range order {
				if (d < u) != (pos[d] < pos[u]) {
					t.Fatalf("candidate %d crossed unscored %d: %v", d, u, order)
				}
			}
		}
	})
}

func TestPartialOrderScoredRunsBestFirstTiesInIncomingOrder(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		scores, scored := candidates(t)
		order := PartialOrder(scores, scored)
		for k := 0; k+1 < len(order); k++ {
			a, b := order[k], order[k+1]
			if !scored[a] || !scored[b] {
				continue
			}
			if scores[a] < scores[b] || (scores[a] == scores[b] && a > b) {
				t.Fatalf("rank %d: %d (%v) before %d (%v)", k, a, scores[a], b, scores[b])
			}
		}
	})
}

func TestPartialOrderAllOrNothingScored(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		scores, _ := candidates(t)
		n := len(scores)
		all := make([]bool, n)
		for i := range all {
			all[i] = true
		}
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		if got := PartialOrder(scores, make([]bool, n)); !slices.Equal(got, want) {
			t.Fatalf("nothing scored: %v", got)
		}
		sort.SliceStable(want, func(a, b int) bool { return scores[want[a]] > scores[want[b]] })
		if got := PartialOrder(scores, all); !slices.Equal(got, want) {
			t.Fatalf("all scored: %v, want %v", got, want)
		}
	})
}
