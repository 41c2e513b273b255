package lychee_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lychee-ai/lychee-grpc/clients/go/lychee"
)

// Against a live server started with LYCHEE_AUTH_TOKEN: the right token is
// served, a missing or wrong one is UNAUTHENTICATED, health needs none.
// Skipped unless LYCHEE_LIVE_AUTH=1 (until the server implements auth).
func TestLiveBearerToken(t *testing.T) {
	if os.Getenv("LYCHEE_LIVE_AUTH") != "1" {
		t.Skip("LYCHEE_LIVE_AUTH=1 not set")
	}
	if os.Getenv("LYCHEE_TARGET") != "" || os.Getenv("LYCHEE_SKIP_INTEGRATION") != "" {
		t.Skip("needs to start its own server")
	}
	const token = "secret"
	stop, addr, err := startServer([]string{"LYCHEE_AUTH_TOKEN=" + token})
	if err != nil {
		t.Fatalf("start a server with LYCHEE_AUTH_TOKEN: %v", err)
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	authed, err := lychee.New(addr, lychee.WithBearerToken(token), lychee.AllowBearerTokenOverPlaintext())
	if err != nil {
		t.Fatal(err)
	}
	defer authed.Close()
	if _, err := authed.RerankTexts(ctx, "red shoes", []string{"a red shoe"}); err != nil {
		t.Errorf("with the token: %v", err)
	}

	for name, opts := range map[string][]lychee.Option{
		"no token":    nil,
		"wrong token": {lychee.WithBearerToken("not-" + token), lychee.AllowBearerTokenOverPlaintext()},
	} {
		c, err := lychee.New(addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.RerankTexts(ctx, "red shoes", []string{"a red shoe"})
		c.Close()
		if !errors.Is(err, lychee.ErrUnauthenticated) {
			t.Errorf("%s: %v, want ErrUnauthenticated", name, err)
		}
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health without a token: %v %v, want SERVING", resp.GetStatus(), err)
	}
}

// Explain against the live server. Skipped unless LYCHEE_LIVE_EXPLAIN=1: the
// server does not implement Explain yet (today it answers INTERNAL
// "NotImplementedError", not UNIMPLEMENTED, so the test cannot tell by itself).
func TestLiveExplain(t *testing.T) {
	needServer(t)
	if os.Getenv("LYCHEE_LIVE_EXPLAIN") != "1" {
		t.Skip("LYCHEE_LIVE_EXPLAIN=1 not set")
	}
	doc := "a bright red trail running shoe"
	resp, err := client.ExplainTexts(ctxT(t, 60*time.Second), "red running shoes", doc)
	if err != nil {
		t.Fatal(err)
	}
	if s := resp.GetScore(); s < 0 || s > 1 {
		t.Errorf("score %v outside [0, 1]", s)
	}
	if len(resp.GetFragments()) == 0 {
		t.Fatal("no fragments")
	}
	for _, f := range resp.GetFragments() {
		if f.GetSource() != lychee.FragmentFromDocument || f.GetPartIndex() != 0 {
			t.Errorf("fragment %v: want document part 0 (include_query not asked)", f)
		}
		if int(f.GetEnd()) > len([]rune(doc)) || f.GetStart() >= f.GetEnd() ||
			string([]rune(doc)[f.GetStart():f.GetEnd()]) != f.GetText() {
			t.Errorf("fragment %q at [%d, %d) does not match the document", f.GetText(), f.GetStart(), f.GetEnd())
		}
	}
}
