package lychee

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking, see WithHealthCheck

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// Defaults of New.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultMaxAttempts    = 4 // the first try and up to 3 retries, on UNAVAILABLE only
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 2 * time.Second
	DefaultMaxRecvMsgSize = 64 << 20 // results echo documents (images) when asked to
)

// Option configures New and Dial.
type Option func(*config)

type config struct {
	timeout        time.Duration
	maxAttempts    int
	initialBackoff time.Duration
	maxBackoff     time.Duration
	creds          credentials.TransportCredentials
	maxRecvMsgSize int
	healthCheck    bool
	healthService  string
	dialOptions    []grpc.DialOption

	bearerToken        string
	bearerTokenSet     bool
	tokenOverPlaintext bool
}

// WithDefaultTimeout sets the deadline given to calls whose context has none
// (default DefaultTimeout). It covers a whole stream in RerankStream. Zero or
// negative: no default deadline.
func WithDefaultTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithRetry sets how many times a call is attempted in all when it fails with
// UNAVAILABLE (gRPC caps this at 5), with exponential backoff between initial
// and max (zero keeps the defaults). maxAttempts <= 1 turns retries off. No
// other status code is retried. A stream is retried only until the server's
// first response has arrived.
func WithRetry(maxAttempts int, initialBackoff, maxBackoff time.Duration) Option {
	return func(c *config) {
		c.maxAttempts = maxAttempts
		if initialBackoff > 0 {
			c.initialBackoff = initialBackoff
		}
		if maxBackoff > 0 {
			c.maxBackoff = maxBackoff
		}
	}
}

// WithoutRetry turns the UNAVAILABLE retries off.
func WithoutRetry() Option { return func(c *config) { c.maxAttempts = 1 } }

// WithTLS turns TLS on with the given configuration; nil means the system
// roots and the target's host name.
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		c.creds = credentials.NewTLS(cfg)
	}
}

// WithTransportCredentials sets the transport credentials (e.g. mTLS from a
// file watcher); it overrides WithTLS. The default is insecure (plaintext).
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *config) { c.creds = creds }
}

// WithMaxRecvMsgSize sets the largest response the client accepts, in bytes
// (default DefaultMaxRecvMsgSize; gRPC's own default is 4 MiB).
func WithMaxRecvMsgSize(n int) Option { return func(c *config) { c.maxRecvMsgSize = n } }

// WithHealthCheck sets the service name of gRPC client-side health checking:
// with round_robin, only backends whose grpc.health.v1 Watch for serviceName
// ("" = the server as a whole) reports SERVING get calls, so pods still
// loading the model, draining after SIGTERM or with a dead engine worker are
// skipped. It is on by default for lychee.v1.RerankService (HealthService).
func WithHealthCheck(serviceName string) Option {
	return func(c *config) { c.healthCheck, c.healthService = true, serviceName }
}

// WithoutHealthCheck turns client-side health checking off: every resolved
// address gets calls, whatever its health reports.
func WithoutHealthCheck() Option { return func(c *config) { c.healthCheck = false } }

// HealthService is the grpc.health.v1 service name the client watches by
// default: the server reports it SERVING once the model is loaded and warmed,
// NOT_SERVING while it drains or when an engine worker has died.
const HealthService = "lychee.v1.RerankService"

// WithDialOptions appends raw gRPC dial options (interceptors, keepalive,
// stats handlers...). They are applied after the client's own.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, opts...) }
}

// Client is a lychee.v1.RerankService client. It is safe for concurrent use;
// make one per target and share it.
type Client struct {
	conn    *grpc.ClientConn
	rpc     lycheev1.RerankServiceClient
	timeout time.Duration
}

// New creates a client for target without connecting; the connection is made
// on the first call (or by Dial). target follows the gRPC naming syntax:
// "host:port" and "dns:///host:port" are resolved through DNS (every address of
// a headless Service), balanced round_robin; "unix:///path" also works.
func New(target string, opts ...Option) (*Client, error) {
	cfg := config{
		timeout:        DefaultTimeout,
		maxAttempts:    DefaultMaxAttempts,
		initialBackoff: DefaultInitialBackoff,
		maxBackoff:     DefaultMaxBackoff,
		creds:          insecure.NewCredentials(),
		maxRecvMsgSize: DefaultMaxRecvMsgSize,
		healthCheck:    true,
		healthService:  HealthService,
	}
	for _, o := range opts {
		o(&cfg)
	}
	sc, err := serviceConfig(&cfg)
	if err != nil {
		return nil, err
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(cfg.creds),
		grpc.WithDefaultServiceConfig(sc),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.maxRecvMsgSize)),
		grpc.WithStatsHandler(attemptStats{}), // lets FailOpen see gRPC's own retries
	}
	if cfg.bearerTokenSet {
		tc, err := tokenCredentials(&cfg)
		if err != nil {
			return nil, err
		}
		dopts = append(dopts, grpc.WithPerRPCCredentials(tc))
	}
	if cfg.maxAttempts <= 1 {
		dopts = append(dopts, grpc.WithDisableRetry())
	}
	dopts = append(dopts, cfg.dialOptions...)
	conn, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("lychee: %w", err)
	}
	return &Client{conn: conn, rpc: lycheev1.NewRerankServiceClient(conn), timeout: cfg.timeout}, nil
}

// Dial is New followed by connecting: it returns once a connection is ready,
// or fails when ctx ends first (give it a deadline).
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	c, err := New(target, opts...)
	if err != nil {
		return nil, err
	}
	c.conn.Connect()
	for {
		s := c.conn.GetState()
		if s == connectivity.Ready {
			return c, nil
		}
		if s == connectivity.Shutdown {
			c.conn.Close()
			return nil, errors.New("lychee: connection shut down")
		}
		if !c.conn.WaitForStateChange(ctx, s) {
			c.conn.Close()
			return nil, fmt.Errorf("lychee: connecting to %s: %w (last state %s)", target, ctx.Err(), s)
		}
	}
}

// Close closes the connection; calls in flight fail with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Service returns the generated client on the same connection, for callers who
// want the raw RPCs (no default deadline, no error wrapping).
func (c *Client) Service() lycheev1.RerankServiceClient { return c.rpc }

// withDefaultTimeout gives ctx the client's default deadline if it has none.
func (c *Client) withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// serviceConfig builds the gRPC service config JSON: round_robin, and retry on
// UNAVAILABLE for every method of lychee.v1.RerankService.
func serviceConfig(cfg *config) (string, error) {
	type retryPolicy struct {
		MaxAttempts          int      `json:"maxAttempts"`
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		RetryableStatusCodes []string `json:"retryableStatusCodes"`
	}
	type methodConfig struct {
		Name        []map[string]string `json:"name"`
		RetryPolicy *retryPolicy        `json:"retryPolicy,omitempty"`
	}
	sc := struct {
		LoadBalancingConfig []map[string]struct{} `json:"loadBalancingConfig"`
		MethodConfig        []methodConfig        `json:"methodConfig"`
		HealthCheckConfig   map[string]string     `json:"healthCheckConfig,omitempty"`
	}{
		LoadBalancingConfig: []map[string]struct{}{{"round_robin": {}}},
	}
	mc := methodConfig{Name: []map[string]string{{"service": lycheev1.RerankService_ServiceDesc.ServiceName}}}
	if cfg.maxAttempts > 1 {
		if cfg.initialBackoff <= 0 || cfg.maxBackoff < cfg.initialBackoff {
			return "", fmt.Errorf("lychee: bad retry backoff %v..%v", cfg.initialBackoff, cfg.maxBackoff)
		}
		mc.RetryPolicy = &retryPolicy{
			MaxAttempts:          min(cfg.maxAttempts, 5),
			InitialBackoff:       durationJSON(cfg.initialBackoff),
			MaxBackoff:           durationJSON(cfg.maxBackoff),
			BackoffMultiplier:    2,
			RetryableStatusCodes: []string{"UNAVAILABLE"},
		}
	}
	sc.MethodConfig = []methodConfig{mc}
	if cfg.healthCheck {
		sc.HealthCheckConfig = map[string]string{"serviceName": cfg.healthService}
	}
	b, err := json.Marshal(sc)
	return string(b), err
}

// durationJSON formats d as a protobuf JSON Duration ("0.100000000s").
func durationJSON(d time.Duration) string {
	return fmt.Sprintf("%d.%09ds", int64(d/time.Second), int64(d%time.Second))
}
