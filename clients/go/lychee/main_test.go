package lychee_test

// Integration tests against the live Python server on the tiny random-weight model.
//
// TestMain starts ONE server for the package:
//   LYCHEE_CLI         the lychee-grpc CLI (default ../../.venv/bin/lychee-grpc, relative to clients/go)
//   LYCHEE_TINY_MODEL  tiny model dir (default ../../.cache/tiny-model, relative to clients/go);
//                      created with `lychee-grpc make-tiny-model DIR` when DIR/config.json is missing
//   LYCHEE_TARGET      if set, use this running server instead of starting one
//   LYCHEE_STARTUP_TIMEOUT  how long to wait for SERVING (default 120s)
//   LYCHEE_SKIP_INTEGRATION=1  start nothing and skip the integration tests (unit tests only)
//   LYCHEE_LIVE_AUTH=1  also run TestLiveBearerToken (contract_live_test.go), which starts a second server with LYCHEE_AUTH_TOKEN
//   LYCHEE_LIVE_EXPLAIN=1  also run TestLiveExplain (once the server implements Explain)

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lychee-ai/lychee-grpc/clients/go/lychee"
)

var (
	target string
	client *lychee.Client
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("LYCHEE_SKIP_INTEGRATION") != "" {
		return m.Run()
	}
	target = os.Getenv("LYCHEE_TARGET")
	if target == "" {
		stop, addr, err := startServer(nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, "lychee integration tests: cannot start the server:", err)
			return 1
		}
		defer stop()
		target = addr
	}
	var err error
	client, err = lychee.New(target, lychee.WithDefaultTimeout(60*time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer client.Close()
	return m.Run()
}

// moduleDir is clients/go (the tests run in clients/go/lychee).
func moduleDir() string {
	d, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return d
}

func envPath(name, def string) string {
	p := os.Getenv(name)
	if p == "" {
		p = def
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(moduleDir(), p)
	}
	return p
}

// startServer starts `lychee-grpc serve` on the tiny model; env holds extra
// KEY=VALUE settings for the server process.
func startServer(env []string) (stop func(), addr string, err error) {
	stop, addr, _, err = startServerCmd(env)
	return stop, addr, err
}

// startServerCmd is startServer that also returns the process, for tests that
// signal it themselves (SIGTERM to drain, SIGKILL); stop still cleans up.
func startServerCmd(env []string) (stop func(), addr string, cmd *exec.Cmd, err error) {
	cli := envPath("LYCHEE_CLI", "../../.venv/bin/lychee-grpc")
	modelDir := envPath("LYCHEE_TINY_MODEL", "../../.cache/tiny-model")
	if _, err := os.Stat(cli); err != nil {
		return nil, "", nil, fmt.Errorf("LYCHEE_CLI: %w", err)
	}
	if _, err := os.Stat(filepath.Join(modelDir, "config.json")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, cli, "make-tiny-model", modelDir).CombinedOutput()
		if err != nil {
			return nil, "", nil, fmt.Errorf("make-tiny-model %s: %w\n%s", modelDir, err, out)
		}
	}

	port, err := freePort()
	if err != nil {
		return nil, "", nil, err
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logFile, err := os.CreateTemp("", "lychee-server-*.log")
	if err != nil {
		return nil, "", nil, err
	}
	cmd = exec.Command(cli, "serve", "--model", modelDir, "--host", "127.0.0.1", "--port", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group: we stop it and its children only
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, "", nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var once sync.Once
	stop = func() { once.Do(func() { stopProcess(cmd, exited, logFile) }) }

	startup := 120 * time.Second
	if s := os.Getenv("LYCHEE_STARTUP_TIMEOUT"); s != "" {
		if startup, err = time.ParseDuration(s); err != nil {
			stop()
			return nil, "", nil, fmt.Errorf("LYCHEE_STARTUP_TIMEOUT: %w", err)
		}
	}
	if err := waitServing(addr, startup, exited); err != nil {
		log := tail(logFile.Name(), 4000)
		stop()
		return nil, "", nil, fmt.Errorf("%w\n--- server log (tail) ---\n%s", err, log)
	}
	return stop, addr, cmd, nil
}

// stopProcess sends SIGTERM to the server's process group, waits up to 15 s
// for the drain, then SIGKILLs the group.
func stopProcess(cmd *exec.Cmd, exited <-chan error, logFile *os.File) {
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
	logFile.Close()
	if os.Getenv("LYCHEE_KEEP_SERVER_LOG") == "" {
		os.Remove(logFile.Name())
	} else {
		fmt.Fprintln(os.Stderr, "server log:", logFile.Name())
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitServing polls grpc.health.v1 Check("") until SERVING.
func waitServing(addr string, timeout time.Duration, exited <-chan error) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("server exited before SERVING: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = resp.GetStatus().String()
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("server at %s not SERVING after %v (last: %s)", addr, timeout, last)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// needServer skips integration tests under LYCHEE_SKIP_INTEGRATION.
func needServer(t *testing.T) {
	t.Helper()
	if client == nil {
		t.Skip("LYCHEE_SKIP_INTEGRATION set: no server")
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
