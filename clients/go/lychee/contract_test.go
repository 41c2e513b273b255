package lychee

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// contractServer is an in-process RerankService that checks a bearer token
// like the real server (when token is set), records the authorization header
// of every call, and answers with what the test asks through the instruction.
type contractServer struct {
	lycheev1.UnimplementedRerankServiceServer
	token string

	mu    sync.Mutex
	auths []string // authorization header of each call, "" when absent
	calls atomic.Int32
}

func (s *contractServer) authorize(ctx context.Context) error {
	s.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	got := strings.Join(md.Get("authorization"), ",")
	s.mu.Lock()
	s.auths = append(s.auths, got)
	s.mu.Unlock()
	if s.token != "" && got != "Bearer "+s.token {
		return status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	}
	return nil
}

func (s *contractServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auths...)
}

func overloaded(delay time.Duration) error {
	st, err := status.New(codes.ResourceExhausted, "queue full").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// Rerank echoes the new request fields into the response so that a test can
// see they travelled: truncation and max_tokens_per_document go into
// request_id, a set min_score drops every document (dropped_documents).
func (s *contractServer) Rerank(ctx context.Context, req *lycheev1.RerankRequest) (*lycheev1.RerankResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	switch req.GetInstruction() {
	case "overloaded":
		return nil, overloaded(1500 * time.Millisecond)
	case "exhausted-without-retry-info":
		return nil, status.Error(codes.ResourceExhausted, "some other limit")
	}
	resp := &lycheev1.RerankResponse{
		Model:     "fake",
		RequestId: req.GetTruncation().String() + "/" + itoa(req.GetMaxTokensPerDocument()),
	}
	for i := range req.GetDocuments() {
		r := &lycheev1.RerankResult{Index: uint32(i), Score: 0.5, Truncated: req.GetTruncation() == lycheev1.Truncation_TRUNCATION_END}
		if req.MinScore != nil && r.Score < req.GetMinScore() {
			resp.DroppedDocuments++
			continue
		}
		if r.Truncated {
			resp.TruncatedDocuments++
		}
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}

func (s *contractServer) RerankStream(stream grpc.BidiStreamingServer[lycheev1.RerankStreamRequest, lycheev1.RerankStreamResponse]) error {
	if err := s.authorize(stream.Context()); err != nil {
		return err
	}
	var opts *lycheev1.StreamOptions
	n := 0
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if msg.GetOptions() != nil {
			opts = msg.GetOptions()
			if opts.GetInstruction() == "overloaded" {
				return overloaded(250 * time.Millisecond)
			}
		}
		n += len(msg.GetDocuments())
	}
	ranking := &lycheev1.RerankResponse{RequestId: opts.GetTruncation().String() + "/" + itoa(opts.GetMaxTokensPerDocument())}
	if opts.MinScore != nil {
		ranking.DroppedDocuments = uint32(n)
	}
	return stream.Send(&lycheev1.RerankStreamResponse{Event: &lycheev1.RerankStreamResponse_Ranking{Ranking: ranking}})
}

func (s *contractServer) GetModelInfo(ctx context.Context, _ *lycheev1.GetModelInfoRequest) (*lycheev1.GetModelInfoResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	return &lycheev1.GetModelInfoResponse{Model: "fake", Workers: 2, Limits: &lycheev1.Limits{
		MaxExplainFragments: 64, ExplainGridSize: 4, DefaultTruncation: lycheev1.Truncation_TRUNCATION_END,
	}}, nil
}

// Explain returns one fragment per word of the document's first text part.
func (s *contractServer) Explain(ctx context.Context, req *lycheev1.ExplainRequest) (*lycheev1.ExplainResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	resp := &lycheev1.ExplainResponse{Score: 0.75, Band: lycheev1.RelevanceBand_RELEVANCE_BAND_STRONG, RequestId: "explain-1"}
	text := req.GetDocument().GetParts()[0].GetText()
	start := 0
	for _, w := range strings.Fields(text) {
		at := strings.Index(text[start:], w) + start
		resp.Fragments = append(resp.Fragments, &lycheev1.Fragment{
			Source: lycheev1.FragmentSource_FRAGMENT_SOURCE_DOCUMENT, Text: w,
			Start: uint32(at), End: uint32(at + len(w)), Attribution: 0.1,
		})
		start = at + len(w)
	}
	return resp, nil
}

func itoa(n uint32) string { return big.NewInt(int64(n)).String() }

func serve(t *testing.T, srv *contractServer, opts ...grpc.ServerOption) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	lycheev1.RegisterRerankServiceServer(gs, srv)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return l.Addr().String()
}

func newClient(t *testing.T, target string, opts ...Option) *Client {
	t.Helper()
	c, err := New(target, append([]Option{WithRetry(4, 10*time.Millisecond, 50*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestBearerTokenReachesTheServerOnEveryRPC(t *testing.T) {
	srv := &contractServer{token: "s3cret"}
	c := newClient(t, serve(t, srv), WithBearerToken("s3cret"), AllowBearerTokenOverPlaintext())
	ctx := testCtx(t)
	if _, err := c.GetModelInfo(ctx); err != nil {
		t.Fatalf("GetModelInfo: %v", err)
	}
	if _, err := c.RerankTexts(ctx, "q", []string{"a"}); err != nil {
		t.Fatalf("Rerank: %v", err)
	}
	if _, err := c.ExplainTexts(ctx, "q", "a b"); err != nil {
		t.Fatalf("Explain: %v", err)
	}
	if _, err := c.RerankStream(ctx, NewStreamOptions(NewQuery(Text("q"))), Chunks(TextDocuments("a"), 1), nil); err != nil {
		t.Fatalf("RerankStream: %v", err)
	}
	got := srv.seen()
	if len(got) != 4 {
		t.Fatalf("%d calls seen, want 4", len(got))
	}
	for i, h := range got {
		if h != "Bearer s3cret" {
			t.Errorf("call %d: authorization %q, want %q", i, h, "Bearer s3cret")
		}
	}
}

func TestNoTokenSendsNoAuthorizationHeader(t *testing.T) {
	srv := &contractServer{}
	c := newClient(t, serve(t, srv))
	if _, err := c.GetModelInfo(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := srv.seen(); len(got) != 1 || got[0] != "" {
		t.Errorf("authorization headers %q, want one empty", got)
	}
}

func TestBearerTokenRefusedOverPlaintextWithoutOptIn(t *testing.T) {
	_, err := New("127.0.0.1:1", WithBearerToken("s3cret"))
	if err == nil || !strings.Contains(err.Error(), "AllowBearerTokenOverPlaintext") {
		t.Fatalf("New with a token over plaintext: %v, want a refusal naming the opt-in", err)
	}
	for _, bad := range []string{"", "two words", "line\nbreak"} {
		if _, err := New("127.0.0.1:1", WithBearerToken(bad), AllowBearerTokenOverPlaintext()); err == nil ||
			!strings.Contains(err.Error(), "WithBearerToken") {
			t.Errorf("token %q: %v, want an error naming WithBearerToken", bad, err)
		}
	}
}

func TestUnauthenticatedIsTypedAndNotRetried(t *testing.T) {
	srv := &contractServer{token: "s3cret"}
	target := serve(t, srv)
	for name, opts := range map[string][]Option{
		"no token":    nil,
		"wrong token": {WithBearerToken("guess"), AllowBearerTokenOverPlaintext()},
	} {
		srv.calls.Store(0)
		_, err := newClient(t, target, opts...).RerankTexts(testCtx(t), "q", []string{"a"})
		var unauth *UnauthenticatedError
		if !errors.As(err, &unauth) {
			t.Fatalf("%s: %v (%T), want *UnauthenticatedError", name, err, err)
		}
		if !errors.Is(err, ErrUnauthenticated) || status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: errors.Is=%v code=%v", name, errors.Is(err, ErrUnauthenticated), status.Code(err))
		}
		if unauth.Message != "missing or invalid bearer token" {
			t.Errorf("%s: message %q", name, unauth.Message)
		}
		if n := srv.calls.Load(); n != 1 {
			t.Errorf("%s: %d attempts, want 1", name, n)
		}
	}
}

func TestOverloadedCarriesTheRetryDelayAndIsNotRetried(t *testing.T) {
	srv := &contractServer{}
	c := newClient(t, serve(t, srv))
	ctx := testCtx(t)
	_, err := c.Rerank(ctx, NewRerankRequest(NewQuery(Text("q")), TextDocuments("a"), WithInstruction("overloaded")))
	var over *OverloadedError
	if !errors.As(err, &over) {
		t.Fatalf("Rerank: %v (%T), want *OverloadedError", err, err)
	}
	if over.RetryAfter != 1500*time.Millisecond {
		t.Errorf("RetryAfter %v, want 1.5s", over.RetryAfter)
	}
	if !errors.Is(err, ErrOverloaded) || status.Code(err) != codes.ResourceExhausted {
		t.Errorf("errors.Is=%v code=%v", errors.Is(err, ErrOverloaded), status.Code(err))
	}
	if n := srv.calls.Load(); n != 1 {
		t.Errorf("%d attempts, want 1 (RESOURCE_EXHAUSTED must not be retried)", n)
	}

	_, err = c.RerankStream(ctx, NewStreamOptions(NewQuery(Text("q")), WithInstruction("overloaded")),
		Chunks(TextDocuments("a"), 1), nil)
	if !errors.As(err, &over) || over.RetryAfter != 250*time.Millisecond {
		t.Errorf("RerankStream: %v, want *OverloadedError after 250ms", err)
	}

	_, err = c.Rerank(ctx, NewRerankRequest(NewQuery(Text("q")), TextDocuments("a"), WithInstruction("exhausted-without-retry-info")))
	if errors.As(err, &over) || status.Code(err) != codes.ResourceExhausted {
		t.Errorf("RESOURCE_EXHAUSTED without RetryInfo: %v (%T), want a plain status error", err, err)
	}
}

func TestNewRerankFieldsRoundTrip(t *testing.T) {
	c := newClient(t, serve(t, &contractServer{}))
	ctx := testCtx(t)
	q := NewQuery(Text("q"))
	resp, err := c.Rerank(ctx, NewRerankRequest(q, TextDocuments("a", "b"),
		WithTruncation(TruncationEnd), WithMaxTokensPerDocument(77)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRequestId() != "TRUNCATION_END/77" || resp.GetTruncatedDocuments() != 2 || !resp.GetResults()[0].GetTruncated() {
		t.Errorf("response %v", resp)
	}
	// min_score is proto3 optional: 0 set explicitly is not the same as unset.
	resp, err = c.Rerank(ctx, NewRerankRequest(q, TextDocuments("a", "b"), WithMinScore(0.9)))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != 0 || resp.GetDroppedDocuments() != 2 {
		t.Errorf("min_score 0.9: %d results, %d dropped", len(resp.GetResults()), resp.GetDroppedDocuments())
	}
	if r := NewRerankRequest(q, nil, WithMinScore(0)); r.MinScore == nil || *r.MinScore != 0 {
		t.Errorf("WithMinScore(0) left min_score unset")
	}
	if r := NewRerankRequest(q, nil); r.MinScore != nil {
		t.Errorf("min_score set without WithMinScore")
	}
	final, err := c.RerankStream(ctx, NewStreamOptions(q, WithTruncation(TruncationNone), WithMaxTokensPerDocument(5),
		WithMinScore(0.1)), Chunks(TextDocuments("a", "b", "c"), 2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if final.GetRequestId() != "TRUNCATION_NONE/5" || final.GetDroppedDocuments() != 3 {
		t.Errorf("stream ranking %v", final)
	}
	info, err := c.GetModelInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.GetWorkers() != 2 || info.GetLimits().GetMaxExplainFragments() != 64 ||
		info.GetLimits().GetDefaultTruncation() != TruncationEnd {
		t.Errorf("model info %v", info)
	}
}

func TestRerankOptionsFillEveryField(t *testing.T) {
	opts := []RerankOption{WithInstruction("i"), WithTopN(3), WithReturnDocuments(), WithTruncation(TruncationEnd),
		WithMinScore(0.25), WithMaxTokensPerDocument(9)}
	q := NewQuery(Text("q"))
	want := &RerankRequest{Query: q, Instruction: "i", TopN: 3, ReturnDocuments: true, Truncation: TruncationEnd,
		MinScore: proto.Float32(0.25), MaxTokensPerDocument: 9}
	if got := NewRerankRequest(q, nil, opts...); !proto.Equal(got, want) {
		t.Errorf("NewRerankRequest\n got %v\nwant %v", got, want)
	}
	wantStream := &StreamOptions{Query: q, Instruction: "i", TopN: 3, ReturnDocuments: true, Truncation: TruncationEnd,
		MinScore: proto.Float32(0.25), MaxTokensPerDocument: 9}
	if got := NewStreamOptions(q, opts...); !proto.Equal(got, wantStream) {
		t.Errorf("NewStreamOptions\n got %v\nwant %v", got, wantStream)
	}
}

func TestExplainRoundTrip(t *testing.T) {
	c := newClient(t, serve(t, &contractServer{}))
	resp, err := c.ExplainTexts(testCtx(t), "q", "red  running shoes")
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetScore() != 0.75 || resp.GetBand() != BandStrong || resp.GetRequestId() != "explain-1" {
		t.Errorf("response %v", resp)
	}
	var words []string
	for _, f := range resp.GetFragments() {
		if f.GetSource() != FragmentFromDocument {
			t.Errorf("fragment %v: source %v", f, f.GetSource())
		}
		words = append(words, f.GetText())
	}
	if strings.Join(words, "|") != "red|running|shoes" || resp.GetFragments()[1].GetStart() != 5 {
		t.Errorf("fragments %v", resp.GetFragments())
	}
}

// selfSigned makes a CA-less self-signed certificate for 127.0.0.1 and localhost.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lychee test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestTLSTrustsOnlyTheGivenCAAndCarriesTheToken(t *testing.T) {
	cert, pool := selfSigned(t)
	_, otherPool := selfSigned(t)
	srv := &contractServer{token: "s3cret"}
	target := serve(t, srv, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))

	// Over TLS the token needs no opt-in.
	good := newClient(t, target, WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}),
		WithBearerToken("s3cret"))
	if _, err := good.GetModelInfo(testCtx(t)); err != nil {
		t.Fatalf("right CA: %v", err)
	}
	if got := srv.seen(); len(got) != 1 || got[0] != "Bearer s3cret" {
		t.Errorf("authorization over TLS %q", got)
	}

	bad := newClient(t, target, WithoutRetry(), WithTLS(&tls.Config{RootCAs: otherPool, MinVersion: tls.VersionTLS12}),
		WithBearerToken("s3cret"))
	_, err := bad.GetModelInfo(testCtx(t))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA: %v, want UNAVAILABLE naming the certificate", err)
	}
	if n := len(srv.seen()); n != 1 {
		t.Errorf("the server saw %d calls, want 1: a client with the wrong CA must not reach it", n)
	}
}
