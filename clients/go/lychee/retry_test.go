package lychee

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// flakyServer fails the first `unavailable` calls with UNAVAILABLE, then answers
// GetModelInfo and rejects every Rerank with INVALID_ARGUMENT.
type flakyServer struct {
	lycheev1.UnimplementedRerankServiceServer
	unavailable int32
	calls       atomic.Int32
}

func (s *flakyServer) GetModelInfo(context.Context, *lycheev1.GetModelInfoRequest) (*lycheev1.GetModelInfoResponse, error) {
	if n := s.calls.Add(1); n <= s.unavailable {
		return nil, status.Error(codes.Unavailable, "model loading")
	}
	return &lycheev1.GetModelInfoResponse{Model: "fake"}, nil
}

func (s *flakyServer) Rerank(context.Context, *lycheev1.RerankRequest) (*lycheev1.RerankResponse, error) {
	s.calls.Add(1)
	return nil, status.Error(codes.InvalidArgument, "no")
}

func startFake(t *testing.T, srv *flakyServer) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	lycheev1.RegisterRerankServiceServer(gs, srv)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return l.Addr().String()
}

// In-process server, no Python: UNAVAILABLE is retried through the service
// config, INVALID_ARGUMENT is not.
func TestRetryOnlyUnavailable(t *testing.T) {
	srv := &flakyServer{unavailable: 2}
	c, err := New(startFake(t, srv), WithRetry(4, 10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.GetModelInfo(ctx); err != nil {
		t.Fatalf("GetModelInfo after 2 UNAVAILABLE: %v", err)
	}
	if got := srv.calls.Load(); got != 3 {
		t.Errorf("%d attempts, want 3", got)
	}

	srv.calls.Store(0)
	_, err = c.RerankTexts(ctx, "q", []string{"d"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Rerank: %v", err)
	}
	if got := srv.calls.Load(); got != 1 {
		t.Errorf("INVALID_ARGUMENT attempted %d times, want 1", got)
	}

	noRetry, err := New(startFake(t, &flakyServer{unavailable: 1}), WithoutRetry())
	if err != nil {
		t.Fatal(err)
	}
	defer noRetry.Close()
	if _, err := noRetry.GetModelInfo(ctx); status.Code(err) != codes.Unavailable {
		t.Errorf("WithoutRetry: got %v, want UNAVAILABLE", err)
	}
}
