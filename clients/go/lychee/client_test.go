package lychee

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestWrapError(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, "bad request").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "documents[1].parts[0].text", Description: "empty text part"},
			{Field: "documents[0].parts[0].image", Description: "not an image", Reason: "UNDECODABLE_IMAGE"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	wrapped := fmt.Errorf("outer: %w", wrapError(st.Err()))
	var inv *InvalidArgumentError
	if !errors.As(wrapped, &inv) {
		t.Fatalf("errors.As failed on %v", wrapped)
	}
	if got := inv.Fields(); !slices.Equal(got, []string{"documents[1].parts[0].text", "documents[0].parts[0].image"}) {
		t.Errorf("fields %v", got)
	}
	if v, ok := inv.Violation("documents[0].parts[0].image"); !ok || v.Reason != "UNDECODABLE_IMAGE" {
		t.Errorf("violation %+v %v", v, ok)
	}
	if status.Code(wrapped) != codes.InvalidArgument {
		t.Errorf("status.Code = %v", status.Code(wrapped))
	}
	if got, want := inv.Error(), "lychee: invalid argument: bad request [documents[1].parts[0].text: empty text part; documents[0].parts[0].image: not an image]"; got != want {
		t.Errorf("Error()\n got %s\nwant %s", got, want)
	}
	st2, _ := status.New(codes.InvalidArgument, "documents[1].parts[0].text: empty").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "documents[1].parts[0].text", Description: "empty"}},
	})
	if got, want := wrapError(st2.Err()).Error(), "lychee: invalid argument: documents[1].parts[0].text: empty"; got != want {
		t.Errorf("Error()\n got %s\nwant %s", got, want)
	}
	other := status.Error(codes.Unavailable, "loading")
	if wrapError(other) != other {
		t.Errorf("non-INVALID_ARGUMENT error changed")
	}
	if wrapError(nil) != nil {
		t.Errorf("nil changed")
	}
}

func TestServiceConfigAccepted(t *testing.T) {
	for _, opts := range [][]Option{
		nil,
		{WithoutRetry()},
		{WithRetry(9, 50*time.Millisecond, time.Second), WithHealthCheck("")},
		{WithTLS(nil), WithMaxRecvMsgSize(1 << 20)},
	} {
		c, err := New("dns:///lychee.example.svc.cluster.local:50051", opts...)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		c.Close()
	}
	if _, err := New("localhost:1", WithRetry(3, time.Second, time.Millisecond)); err == nil {
		t.Errorf("bad backoff accepted")
	}
	cfg := config{maxAttempts: 4, initialBackoff: 100 * time.Millisecond, maxBackoff: 2 * time.Second}
	sc, _ := serviceConfig(&cfg)
	want := `{"loadBalancingConfig":[{"round_robin":{}}],"methodConfig":[{"name":[{"service":"lychee.v1.RerankService"}],` +
		`"retryPolicy":{"maxAttempts":4,"initialBackoff":"0.100000000s","maxBackoff":"2.000000000s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`
	if sc != want {
		t.Errorf("service config\n got %s\nwant %s", sc, want)
	}
	// New's defaults: round_robin with client-side health checking of the rerank service.
	def := config{maxAttempts: 1, healthCheck: true, healthService: HealthService}
	if sc, _ := serviceConfig(&def); !strings.Contains(sc, `"healthCheckConfig":{"serviceName":"lychee.v1.RerankService"}`) {
		t.Errorf("default service config lacks health checking: %s", sc)
	}
	off := def
	WithoutHealthCheck()(&off)
	if sc, _ := serviceConfig(&off); strings.Contains(sc, "healthCheckConfig") {
		t.Errorf("WithoutHealthCheck left %s", sc)
	}
}
