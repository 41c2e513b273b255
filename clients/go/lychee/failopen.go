package lychee

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// Outcome says how a fail-open rerank ended. Reranked and Partial served
// scores; every other outcome served the incoming order and names why.
type Outcome int

const (
	// Reranked: every candidate was scored in time; the reranker's order.
	Reranked Outcome = iota
	// Partial: the call ended before every candidate was scored (the budget
	// ran out mid-list, or the replica failed mid-stream); PartialOrder over
	// what was scored.
	Partial
	// Deadline: the budget ran out before any candidate was scored (a replica
	// took the call but was slow).
	Deadline
	// Overloaded: RESOURCE_EXHAUSTED, and its RetryInfo delay did not fit in
	// what was left of the budget.
	Overloaded
	// Unavailable: no replica could take the call (down, draining, loading,
	// unreachable).
	Unavailable
	// Unauthenticated: a missing or wrong bearer token (alert on it).
	Unauthenticated
	// Invalid: INVALID_ARGUMENT; this request can never be reranked as sent.
	Invalid
	// CircuitOpen: the circuit breaker is open; the reranker was not called.
	CircuitOpen
	// Failed: any other error (INTERNAL, a broken stream...).
	Failed
)

var outcomeNames = [...]string{"reranked", "partial", "deadline", "overloaded", "unavailable", "unauthenticated",
	"invalid", "circuit_open", "failed"}

// String is the lower-case name, e.g. "circuit_open": a metric label.
func (o Outcome) String() string {
	if o < 0 || int(o) >= len(outcomeNames) {
		return "unknown"
	}
	return outcomeNames[o]
}

// FellBack reports whether the incoming order was served unchanged.
func (o Outcome) FellBack() bool { return o != Reranked && o != Partial }

// FailOpenResult is what a fail-open rerank serves: always an order of every
// candidate, always within the budget.
type FailOpenResult struct {
	Outcome Outcome
	// Order[k] is the incoming index of the candidate at rank k: a permutation
	// of 0..n-1.
	Order []int
	// Scores[i] is the score of incoming candidate i when Scored[i].
	Scores []float32
	Scored []bool
	// ScoredCount is the number of candidates scored.
	ScoredCount int
	// Elapsed is the time from the call to its return.
	Elapsed time.Duration
	// Attempts is the number of calls made: 0 with the circuit open, 2 after
	// an honoured RetryInfo.
	Attempts int
	// Err is the error that ended the call, if one did (nil for Reranked and
	// for a budget spent client-side).
	Err error
	// Response is the server's full ranking when Reranked.
	Response *RerankResponse
}

// FailOpenOptions configures NewFailOpen; zero fields take the defaults.
type FailOpenOptions struct {
	// Budget is the default latency budget of a call (default 300 ms).
	Budget time.Duration
	// ChunkSize is the number of candidates per stream message (default 25).
	ChunkSize int
	// MinRetryWindow: after an overload's RetryInfo delay, at least this much
	// of the budget must be left for a retry to be made (default 20 ms);
	// otherwise the call falls back as Overloaded at once.
	MinRetryWindow time.Duration
	// Breaker configures the sony/gobreaker circuit breaker (default
	// DefaultBreakerSettings). Its IsSuccessful and IsExcluded are set by
	// FailOpen: budget overruns count as failures, Invalid is excluded.
	Breaker *gobreaker.Settings
	// OnResult is called with every result before Rerank returns, on the
	// calling goroutine: feed your metrics and logs here. A panic in it is
	// recovered, so that it can never break a search.
	OnResult func(*FailOpenResult)
}

// DefaultBreakerSettings: open when at least 5 of the calls in a 20 s window
// were made and half of them failed; stay open 5 s, then let 3 calls probe;
// close when they succeed.
func DefaultBreakerSettings() gobreaker.Settings {
	return gobreaker.Settings{
		Name:        "lychee-rerank",
		MaxRequests: 3,
		Interval:    20 * time.Second,
		Timeout:     5 * time.Second,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.Requests >= 5 && c.TotalFailures*2 >= c.Requests
		},
	}
}

// FailOpen reranks in a way that can never break a search: Rerank takes the
// candidates in retrieval order and a budget, and always returns an order of
// all of them within the budget.
//
//   - The candidates go over RerankStream, so each score is known as soon as it
//     is computed. When the final ranking arrives in time: Reranked. When the
//     budget runs out first: Partial with PartialOrder over what was scored
//     (the call is cancelled, and the server drops the rest), or Deadline
//     when nothing was.
//   - Any error serves the incoming order with its reason (Outcome).
//     RESOURCE_EXHAUSTED with a RetryInfo delay is retried after the delay only
//     when the delay plus MinRetryWindow fits in what is left of the budget.
//   - A sony/gobreaker circuit breaker sees every call: once open, calls
//     return CircuitOpen in microseconds without touching the network; after
//     its timeout a few calls probe, and it closes when they succeed.
//
// Safe for concurrent use; make one per Client.
type FailOpen struct {
	client *Client
	opts   FailOpenOptions
	cb     *gobreaker.CircuitBreaker[struct{}]
}

// NewFailOpen wraps c.
func NewFailOpen(c *Client, opts FailOpenOptions) *FailOpen {
	if opts.Budget <= 0 {
		opts.Budget = 300 * time.Millisecond
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 25
	}
	if opts.MinRetryWindow <= 0 {
		opts.MinRetryWindow = 20 * time.Millisecond
	}
	st := DefaultBreakerSettings()
	if opts.Breaker != nil {
		st = *opts.Breaker
	}
	st.IsSuccessful = func(err error) bool { return err == nil }
	st.IsExcluded = func(err error) bool { return status.Code(err) == codes.InvalidArgument }
	return &FailOpen{client: c, opts: opts, cb: gobreaker.NewCircuitBreaker[struct{}](st)}
}

// BreakerState is the circuit breaker's state (closed, half-open, open).
func (f *FailOpen) BreakerState() gobreaker.State { return f.cb.State() }

// BreakerCounts are the breaker's counts in its current window.
func (f *FailOpen) BreakerCounts() gobreaker.Counts { return f.cb.Counts() }

// Budget is the default budget.
func (f *FailOpen) Budget() time.Duration { return f.opts.Budget }

// Rerank reranks docs against query within the default budget (or ctx's
// deadline, when sooner), with the server's default instruction.
func (f *FailOpen) Rerank(ctx context.Context, query *Query, docs []*Document) *FailOpenResult {
	return f.RerankWithin(ctx, &StreamOptions{Query: query}, docs, f.opts.Budget)
}

// RerankWithin reranks with stream options (instruction, truncation, token
// limit) within budget. TopN, MinScore and ReturnDocuments are cleared: the
// served order always holds every candidate.
func (f *FailOpen) RerankWithin(ctx context.Context, options *StreamOptions, docs []*Document,
	budget time.Duration) (res *FailOpenResult) {
	start := time.Now()
	end := start.Add(budget)
	if d, ok := ctx.Deadline(); ok && d.Before(end) {
		end = d
	}
	opts := &lycheev1.StreamOptions{
		Query:                options.GetQuery(),
		Instruction:          options.GetInstruction(),
		Truncation:           options.GetTruncation(),
		MaxTokensPerDocument: options.GetMaxTokensPerDocument(),
	}
	if len(docs) == 0 {
		res = &FailOpenResult{Outcome: Reranked, Order: []int{}, Elapsed: time.Since(start)}
	} else {
		res = f.call(ctx, opts, docs, start, end)
	}
	if f.opts.OnResult != nil {
		func() {
			defer func() { _ = recover() }()
			f.opts.OnResult(res)
		}()
	}
	return res
}

func (f *FailOpen) call(ctx context.Context, opts *StreamOptions, docs []*Document, start, end time.Time) *FailOpenResult {
	n := len(docs)
	attempts := 0
	for {
		var a *attempt
		_, err := f.cb.Execute(func() (struct{}, error) {
			attempts++
			a = f.attempt(ctx, opts, docs, end)
			return struct{}{}, a.breakerErr()
		})
		if a == nil { // the breaker refused the call
			return fallBack(CircuitOpen, n, start, attempts, err)
		}
		if a.ranking != nil && a.err == nil {
			if order, ok := a.rankingOrder(n); ok {
				return &FailOpenResult{Outcome: Reranked, Order: order, Scores: a.scores, Scored: a.scored,
					ScoredCount: n, Elapsed: time.Since(start), Attempts: attempts, Response: a.ranking}
			}
		}
		if a.scoredCount > 0 && status.Code(a.err) != codes.InvalidArgument {
			return &FailOpenResult{Outcome: Partial, Order: PartialOrder(a.scores, a.scored), Scores: a.scores,
				Scored: a.scored, ScoredCount: a.scoredCount, Elapsed: time.Since(start), Attempts: attempts, Err: a.err}
		}
		var over *OverloadedError
		switch code := status.Code(a.err); {
		case errors.Is(ctx.Err(), context.Canceled):
			return fallBack(Failed, n, start, attempts, a.err) // the caller gave up
		case a.err == nil || code == codes.DeadlineExceeded:
			return fallBack(f.deadlineOrUnavailable(a), n, start, attempts, a.err)
		case code == codes.Unavailable || code == codes.Canceled:
			// CANCELLED not of our doing: the replica ended the call (shutting down).
			return fallBack(Unavailable, n, start, attempts, a.err)
		case code == codes.Unauthenticated:
			return fallBack(Unauthenticated, n, start, attempts, a.err)
		case code == codes.InvalidArgument:
			return fallBack(Invalid, n, start, attempts, a.err)
		case errors.As(a.err, &over):
			if time.Now().Add(over.RetryAfter + f.opts.MinRetryWindow).After(end) {
				return fallBack(Overloaded, n, start, attempts, a.err)
			}
			select {
			case <-time.After(over.RetryAfter):
				continue // the retry fits in the budget
			case <-ctx.Done():
				return fallBack(Overloaded, n, start, attempts, a.err)
			}
		default:
			return fallBack(Failed, n, start, attempts, a.err)
		}
	}
}

// deadlineOrUnavailable: a call that ran out of budget with nothing scored is
// Deadline when a replica took its latest try (sent its headers) but was too
// slow; Unavailable when the budget went on gRPC's own retries of UNAVAILABLE
// (the last try a replica ended was refused) or on connecting (the channel is
// not READY); else Deadline.
func (f *FailOpen) deadlineOrUnavailable(a *attempt) Outcome {
	if t := a.latestTry.Load(); t != nil && t.taken.Load() {
		return Deadline // read before that try's own end, which the cancel makes later
	}
	if last, _ := a.lastAttempt.Load().(error); status.Code(last) == codes.Unavailable {
		return Unavailable
	}
	switch f.client.conn.GetState() {
	case connectivity.Ready, connectivity.Idle:
		return Deadline
	}
	return Unavailable
}

func fallBack(o Outcome, n int, start time.Time, attempts int, err error) *FailOpenResult {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	return &FailOpenResult{Outcome: o, Order: order, Scores: make([]float32, n), Scored: make([]bool, n),
		Elapsed: time.Since(start), Attempts: attempts, Err: err}
}

// attempt is one RerankStream call: the candidates sent, scores gathered until
// the ranking, an error or the budget's end.
type attempt struct {
	scores      []float32
	scored      []bool
	scoredCount int
	ranking     *RerankResponse
	err         error // nil: the ranking came, or the budget ran out client-side
	spent       bool  // the budget ran out before the ranking
	// lastAttempt is how gRPC's latest try of this call that the replica or
	// the transport ended did end (gRPC retries UNAVAILABLE by itself); tries
	// ended by the call's own cancel or deadline are left out. Set by
	// attemptStats.
	lastAttempt atomic.Value
	// latestTry is gRPC's latest try of this call (attemptStats tags each).
	latestTry atomic.Pointer[try]
}

// try is one of gRPC's tries of a call: whether a replica took it (sent its
// headers).
type try struct {
	taken atomic.Bool
}

// breakerErr is what the breaker counts: success only for a full ranking;
// a budget overrun is a failure, so a replica set slowed past the budget
// opens the circuit too.
func (a *attempt) breakerErr() error {
	switch {
	case a.err != nil:
		return a.err
	case a.ranking == nil || a.spent:
		return status.Error(codes.DeadlineExceeded, "lychee: fail-open budget spent")
	}
	return nil
}

func (a *attempt) rankingOrder(n int) ([]int, bool) {
	results := a.ranking.GetResults()
	if len(results) != n {
		return nil, false
	}
	order := make([]int, n)
	seen := make([]bool, n)
	for k, r := range results {
		i := int(r.GetIndex())
		if i < 0 || i >= n || seen[i] {
			return nil, false
		}
		seen[i] = true
		order[k] = i
		a.scored[i], a.scores[i] = true, r.GetScore()
	}
	a.scoredCount = n
	return order, true
}

type attemptKey struct{}

type tryKey struct{}

func (f *FailOpen) attempt(ctx context.Context, opts *StreamOptions, docs []*Document, end time.Time) *attempt {
	n := len(docs)
	a := &attempt{scores: make([]float32, n), scored: make([]bool, n)}
	ctx, cancel := context.WithDeadline(context.WithValue(ctx, attemptKey{}, a), end)
	defer cancel()
	stream, err := f.client.rpc.RerankStream(ctx)
	if err != nil {
		a.err = f.classify(ctx, err, a)
		return a
	}
	var sendErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sendErr = sendChunks(stream, opts, Chunks(docs, f.opts.ChunkSize))
	}()
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			if a.ranking == nil {
				a.err = status.Error(codes.Internal, "lychee: RerankStream ended without a ranking")
			}
			break
		}
		if err != nil {
			a.err = f.classify(ctx, err, a)
			break
		}
		switch ev := msg.GetEvent().(type) {
		case *lycheev1.RerankStreamResponse_Scored:
			if i := int(ev.Scored.GetIndex()); i >= 0 && i < n && !a.scored[i] {
				a.scored[i], a.scores[i] = true, ev.Scored.GetScore()
				a.scoredCount++
			}
		case *lycheev1.RerankStreamResponse_Ranking:
			a.ranking = ev.Ranking
		}
	}
	cancel()
	wg.Wait()
	if a.err == nil && sendErr != nil && !errors.Is(sendErr, io.EOF) && !isCancellation(sendErr) {
		a.err = wrapError(sendErr)
	}
	return a
}

// classify: the budget's own end is not an error of the server's (err nil,
// spent); everything else is the typed error.
func (f *FailOpen) classify(ctx context.Context, err error, a *attempt) error {
	if ctx.Err() != nil && isCancellation(err) {
		a.spent = true
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil
		}
		return status.Error(codes.Canceled, "lychee: the caller's context ended")
	}
	return wrapError(err)
}

// attemptStats is a gRPC stats handler that tells a fail-open call how each
// of gRPC's own tries of it ended: a budget spent on retries of UNAVAILABLE is
// Unavailable, not Deadline.
type attemptStats struct{}

// TagRPC runs once per try of a call (gRPC's retries included).
func (attemptStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	if a, ok := ctx.Value(attemptKey{}).(*attempt); ok {
		t := &try{}
		a.latestTry.Store(t)
		return context.WithValue(ctx, tryKey{}, t)
	}
	return ctx
}
func (attemptStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (attemptStats) HandleConn(context.Context, stats.ConnStats) {}
func (attemptStats) HandleRPC(ctx context.Context, s stats.RPCStats) {
	switch s := s.(type) {
	case *stats.InHeader:
		if t, ok := ctx.Value(tryKey{}).(*try); ok {
			t.taken.Store(true)
		}
	case *stats.End:
		// A try ended by this call's own end (the budget's cancel, its deadline)
		// says nothing of the replica, and may end after the try one refused.
		if code := status.Code(s.Error); s.Error == nil || code == codes.Canceled || code == codes.DeadlineExceeded {
			return
		}
		if a, ok := ctx.Value(attemptKey{}).(*attempt); ok {
			a.lastAttempt.Store(s.Error)
		}
	}
}
