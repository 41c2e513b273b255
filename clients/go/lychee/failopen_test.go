package lychee

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// failOpenMargin is the slack over the budget for a loaded 2-core CI machine.
const failOpenMargin = 150 * time.Millisecond

// streamFake answers RerankStream as its query text says; a document's text is its score.
type streamFake struct {
	lycheev1.UnimplementedRerankServiceServer
	calls atomic.Int32
}

func (s *streamFake) RerankStream(stream grpc.BidiStreamingServer[lycheev1.RerankStreamRequest, lycheev1.RerankStreamResponse]) error {
	call := s.calls.Add(1)
	var mode string
	var scores []float32
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if req.GetOptions() != nil {
			mode = req.GetOptions().GetQuery().GetParts()[0].GetText()
			if err := fakeError(mode, call); err != nil {
				return err
			}
			if then, ok := strings.CutPrefix(mode, "unavailable-then-"); ok { // gRPC's retry of the refused first try
				mode = "stall"
				if then == "slow" {
					if err := stream.SendHeader(nil); err != nil { // taken, as a replica takes a call: then held
						return err
					}
				}
			}
		}
		for _, d := range req.GetDocuments() {
			f, _ := strconv.ParseFloat(d.GetParts()[0].GetText(), 32)
			i := len(scores)
			scores = append(scores, float32(f))
			emit := !strings.HasPrefix(mode, "stall")
			if k, ok := strings.CutPrefix(mode, "stall-after:"); ok {
				limit, _ := strconv.Atoi(k)
				emit = i < limit
			}
			if emit {
				if err := stream.Send(&lycheev1.RerankStreamResponse{Event: &lycheev1.RerankStreamResponse_Scored{
					Scored: &lycheev1.RerankResult{Index: uint32(i), Score: float32(f)}}}); err != nil {
					return err
				}
			}
		}
	}
	if strings.HasPrefix(mode, "stall") {
		<-stream.Context().Done() // never answers: the client's budget ends the call
		return stream.Context().Err()
	}
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return scores[idx[a]] > scores[idx[b]] })
	ranking := &lycheev1.RerankResponse{}
	for _, i := range idx {
		ranking.Results = append(ranking.Results, &lycheev1.RerankResult{Index: uint32(i), Score: scores[i]})
	}
	return stream.Send(&lycheev1.RerankStreamResponse{Event: &lycheev1.RerankStreamResponse_Ranking{Ranking: ranking}})
}

func fakeError(mode string, call int32) error {
	if strings.HasPrefix(mode, "unavailable-then-") && call == 1 {
		return status.Error(codes.Unavailable, "draining")
	}
	if ms, ok := strings.CutPrefix(mode, "overloaded:"); ok {
		if call > 1 {
			return nil
		}
		d, _ := strconv.Atoi(ms)
		st, _ := status.New(codes.ResourceExhausted, "queue full").WithDetails(&errdetails.RetryInfo{
			RetryDelay: durationpb.New(time.Duration(d) * time.Millisecond)})
		return st.Err()
	}
	switch mode {
	case "unavailable":
		return status.Error(codes.Unavailable, "draining")
	case "unauthenticated":
		return status.Error(codes.Unauthenticated, "missing bearer token")
	case "internal":
		return status.Error(codes.Internal, "boom")
	case "invalid":
		st, _ := status.New(codes.InvalidArgument, "documents[1].parts[0].text: empty text").WithDetails(
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: "documents[1].parts[0].text", Description: "empty text"}}})
		return st.Err()
	}
	return nil
}

var ten = []float32{0.1, 0.9, 0.3, 0.8, 0.5, 0.2, 0.7, 0.4, 0.6, 0.0}

func scoreDocs(scores []float32) []*Document {
	docs := make([]*Document, len(scores))
	for i, s := range scores {
		docs[i] = NewDocument("d"+strconv.Itoa(i), Text(strconv.FormatFloat(float64(s), 'f', -1, 32)))
	}
	return docs
}

func identity(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func newFailOpen(t *testing.T, opts FailOpenOptions) (*FailOpen, *streamFake) {
	t.Helper()
	fake := &streamFake{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	lycheev1.RegisterRerankServiceServer(gs, fake)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	c, err := New(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if opts.Budget == 0 {
		opts.Budget = 300 * time.Millisecond
	}
	opts.ChunkSize = 3
	return NewFailOpen(c, opts), fake
}

func withinBudget(t *testing.T, r *FailOpenResult, budget time.Duration) {
	t.Helper()
	if r.Elapsed > budget+failOpenMargin {
		t.Errorf("took %v, budget %v", r.Elapsed, budget)
	}
}

func TestFailOpenRerankedInTime(t *testing.T) {
	fo, _ := newFailOpen(t, FailOpenOptions{})
	r := fo.Rerank(context.Background(), NewQuery(Text("fast")), scoreDocs(ten))
	if r.Outcome != Reranked || !slices.Equal(r.Order, []int{1, 3, 6, 8, 4, 7, 2, 5, 0, 9}) || r.ScoredCount != 10 {
		t.Fatalf("%v %v scored %d err %v", r.Outcome, r.Order, r.ScoredCount, r.Err)
	}
	if r.Response == nil || r.Outcome.FellBack() {
		t.Errorf("no response / fell back")
	}
}

func TestFailOpenPartialWithinBudget(t *testing.T) {
	fo, _ := newFailOpen(t, FailOpenOptions{})
	r := fo.Rerank(context.Background(), NewQuery(Text("stall-after:5")), scoreDocs(ten))
	if r.Outcome != Partial || r.ScoredCount != 5 {
		t.Fatalf("%v scored %d err %v", r.Outcome, r.ScoredCount, r.Err)
	}
	if want := []int{1, 3, 4, 2, 0, 5, 6, 7, 8, 9}; !slices.Equal(r.Order, want) {
		t.Errorf("order %v, want %v", r.Order, want)
	}
	withinBudget(t, r, 300*time.Millisecond)
	if r.Elapsed < 290*time.Millisecond {
		t.Errorf("returned before the budget: %v", r.Elapsed)
	}
}

func TestFailOpenDeadlineAndErrorsFallBack(t *testing.T) {
	fo, _ := newFailOpen(t, FailOpenOptions{})
	for mode, want := range map[string]Outcome{"stall": Deadline, "unauthenticated": Unauthenticated,
		"invalid": Invalid, "internal": Failed, "unavailable": Unavailable} {
		r := fo.Rerank(context.Background(), NewQuery(Text(mode)), scoreDocs(ten))
		if r.Outcome != want || !slices.Equal(r.Order, identity(10)) {
			t.Errorf("%s: %v %v err %v", mode, r.Outcome, r.Order, r.Err)
		}
		withinBudget(t, r, 300*time.Millisecond)
	}
}

// gRPC retries the refused first try; the budget ends while the retry is held,
// so the retry's end (ours) comes after the refusal, every time. A retry no
// replica took leaves the refusal's Unavailable; one a replica took (sent its
// headers) and held is Deadline.
func TestFailOpenRetryHeldPastTheBudgetIsUnavailableUnlessAReplicaTookIt(t *testing.T) {
	for mode, want := range map[string]Outcome{"unavailable-then-silent": Unavailable, "unavailable-then-slow": Deadline} {
		fo, fake := newFailOpen(t, FailOpenOptions{})
		r := fo.Rerank(context.Background(), NewQuery(Text(mode)), scoreDocs(ten))
		if r.Outcome != want || fake.calls.Load() != 2 {
			t.Errorf("%s: %v after %d calls, err %v", mode, r.Outcome, fake.calls.Load(), r.Err)
		}
		withinBudget(t, r, 300*time.Millisecond)
	}
}

func TestFailOpenRetryInfoOnlyWithinBudget(t *testing.T) {
	fo, fake := newFailOpen(t, FailOpenOptions{})
	r := fo.RerankWithin(context.Background(), &StreamOptions{Query: NewQuery(Text("overloaded:60"))}, scoreDocs(ten),
		600*time.Millisecond)
	if r.Outcome != Reranked || r.Attempts != 2 || r.Elapsed < 60*time.Millisecond {
		t.Errorf("fits: %v attempts %d in %v (%v)", r.Outcome, r.Attempts, r.Elapsed, r.Err)
	}
	fake.calls.Store(0)
	r = fo.Rerank(context.Background(), NewQuery(Text("overloaded:1500")), scoreDocs(ten))
	if r.Outcome != Overloaded || r.Attempts != 1 || r.Elapsed > 150*time.Millisecond {
		t.Errorf("does not fit: %v attempts %d in %v", r.Outcome, r.Attempts, r.Elapsed)
	}
	var over *OverloadedError
	if !errors.As(r.Err, &over) || over.RetryAfter != 1500*time.Millisecond {
		t.Errorf("err %v", r.Err)
	}
}

func TestFailOpenBreakerOpensProbesAndCloses(t *testing.T) {
	var seen []*FailOpenResult
	var changes []string
	st := gobreaker.Settings{Name: "test", MaxRequests: 1, Timeout: 300 * time.Millisecond,
		ReadyToTrip:   func(c gobreaker.Counts) bool { return c.Requests >= 3 && c.TotalFailures*2 >= c.Requests },
		OnStateChange: func(_ string, from, to gobreaker.State) { changes = append(changes, from.String()+"->"+to.String()) }}
	fo, fake := newFailOpen(t, FailOpenOptions{Breaker: &st, OnResult: func(r *FailOpenResult) { seen = append(seen, r) }})
	for range 3 {
		fo.Rerank(context.Background(), NewQuery(Text("internal")), scoreDocs(ten))
	}
	if fo.BreakerState() != gobreaker.StateOpen {
		t.Fatalf("breaker %v after 3 failures", fo.BreakerState())
	}
	before := fake.calls.Load()
	docs := scoreDocs(ten)
	took := make([]time.Duration, 20)
	for i := range took {
		t0 := time.Now()
		r := fo.Rerank(context.Background(), NewQuery(Text("fast")), docs)
		took[i] = time.Since(t0)
		if r.Outcome != CircuitOpen || r.Attempts != 0 || !slices.Equal(r.Order, identity(10)) {
			t.Fatalf("open: %v attempts %d", r.Outcome, r.Attempts)
		}
	}
	slices.Sort(took)
	if fake.calls.Load() != before {
		t.Errorf("an open circuit called the server")
	}
	if took[len(took)/2] > time.Millisecond {
		t.Errorf("an open circuit took %v (median)", took[len(took)/2])
	}
	time.Sleep(350 * time.Millisecond)
	if r := fo.Rerank(context.Background(), NewQuery(Text("fast")), docs); r.Outcome != Reranked {
		t.Fatalf("probe: %v %v", r.Outcome, r.Err)
	}
	if fo.BreakerState() != gobreaker.StateClosed {
		t.Errorf("breaker %v after a good probe", fo.BreakerState())
	}
	if want := []string{"closed->open", "open->half-open", "half-open->closed"}; !slices.Equal(changes, want) {
		t.Errorf("state changes %v", changes)
	}
	if len(seen) != 24 || seen[3].Outcome != CircuitOpen {
		t.Errorf("OnResult saw %d results", len(seen))
	}
}

func TestFailOpenInvalidDoesNotCountAndOnResultPanicIsContained(t *testing.T) {
	fo, _ := newFailOpen(t, FailOpenOptions{OnResult: func(*FailOpenResult) { panic("dashboard down") }})
	for range 10 {
		if r := fo.Rerank(context.Background(), NewQuery(Text("invalid")), scoreDocs(ten)); r.Outcome != Invalid {
			t.Fatalf("%v", r.Outcome)
		}
	}
	if fo.BreakerState() != gobreaker.StateClosed || fo.BreakerCounts().TotalFailures != 0 {
		t.Errorf("invalid requests counted: %v %+v", fo.BreakerState(), fo.BreakerCounts())
	}
	if r := fo.Rerank(context.Background(), NewQuery(Text("fast")), nil); r.Outcome != Reranked || len(r.Order) != 0 {
		t.Errorf("no candidates: %v", r.Outcome)
	}
}
