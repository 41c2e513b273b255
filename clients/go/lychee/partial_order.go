package lychee

import "sort"

// PartialOrder is the order served when only some candidates were scored
// before the budget ran out. scores and scored are indexed by incoming
// (retrieval) position; order[k] is the incoming index of the candidate
// served at rank k.
//
// A candidate that was never scored keeps its position and is a wall: the
// scored candidates between two walls (a maximal run of consecutive scored
// positions) are sorted best first among the positions they held, ties in
// their incoming order. So no candidate moves past one that was never scored.
// With every candidate scored this is the full ranking; with none, the
// incoming order.
func PartialOrder(scores []float32, scored []bool) []int {
	if len(scores) != len(scored) {
		panic("lychee.PartialOrder: scores and scored differ in length")
	}
	n := len(scores)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	for i := 0; i < n; {
		if !scored[i] {
			i++
			continue
		}
		end := i
		for end < n && scored[end] {
			end++
		}
		run := order[i:end]
		sort.SliceStable(run, func(a, b int) bool { return scores[run[a]] > scores[run[b]] })
		i = end
	}
	return order
}
