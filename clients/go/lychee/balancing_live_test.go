package lychee_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/lychee-ai/lychee-grpc/clients/go/lychee"
)

// drainedWithin: after SIGTERM (or SIGKILL), no call may start on that
// replica once this much time has passed.
const drainedWithin = time.Second

type peerKey struct{}

// recordPeer adds grpc.Peer to every stream whose context carries a
// *peer.Peer, so the test learns which replica took each call.
func recordPeer(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if p, ok := ctx.Value(peerKey{}).(*peer.Peer); ok {
		opts = append(opts, grpc.Peer(p))
	}
	return streamer(ctx, desc, cc, method, opts...)
}

type liveCall struct {
	start  time.Time
	port   int
	result *lychee.FailOpenResult
}

// Three real server processes behind one dns:/// name (answered by a resolver
// this test controls: a static list of the three ports), with the client's
// defaults for it (round_robin + client-side health checking of
// lychee.v1.RerankService) and fail-open searches from three goroutines:
// traffic spreads over all three; one replica gets SIGTERM mid-traffic,
// another SIGKILL; no search fails, and drainedWithin after each event no call
// reaches that replica.
func TestLiveBalancingOverHealthyReplicas(t *testing.T) {
	needServer(t)
	type started struct {
		stop func()
		addr string
		cmd  *exec.Cmd
		err  error
	}
	servers := make([]started, 3)
	var wg sync.WaitGroup
	for i := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One torch thread each: three servers and the test share a 2-core machine.
			s := &servers[i]
			s.stop, s.addr, s.cmd, s.err = startServerCmd([]string{"LYCHEE_TORCH_THREADS=1", "LYCHEE_PREPROCESS_THREADS=1"})
		}()
	}
	wg.Wait()
	ports := make([]int, 3)
	for i, s := range servers {
		if s.err != nil {
			t.Fatalf("replica %d: %v", i, s.err)
		}
		defer s.stop()
		_, p, _ := net.SplitHostPort(s.addr)
		ports[i], _ = strconv.Atoi(p)
	}

	r := manual.NewBuilderWithScheme("dns")
	var addrs []resolver.Address
	for _, s := range servers {
		addrs = append(addrs, resolver.Address{Addr: s.addr})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	c, err := lychee.New("dns:///lychee-replicas.test:50051",
		lychee.WithDialOptions(grpc.WithResolvers(r), grpc.WithChainStreamInterceptor(recordPeer)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fo := lychee.NewFailOpen(c, lychee.FailOpenOptions{Budget: 5 * time.Second})

	docs := lychee.TextDocuments("Vintage wash denim jacket", "Organic green tea", "Retro corduroy jacket",
		"Leather boots", "Denim shirt", "Kitchen knife", "Blue jeans", "Wool scarf")
	var mu sync.Mutex
	var calls []liveCall
	stop := make(chan struct{})
	var workers sync.WaitGroup
	for range 3 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				p := &peer.Peer{}
				start := time.Now()
				res := fo.Rerank(context.WithValue(context.Background(), peerKey{}, p),
					lychee.NewQuery(lychee.Text("retro denim jacket")), docs)
				port := -1
				if p.Addr != nil {
					port = p.Addr.(*net.TCPAddr).Port
				}
				mu.Lock()
				calls = append(calls, liveCall{start, port, res})
				mu.Unlock()
			}
		}()
	}
	snapshot := func() []liveCall {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(calls)
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := map[int]bool{}
		for _, c := range snapshot() {
			seen[c.port] = true
		}
		if seen[ports[0]] && seen[ports[1]] && seen[ports[2]] {
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			workers.Wait()
			t.Fatalf("not every replica got a call within 30 s: %v", seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	warmEnd := time.Now()
	time.Sleep(1500 * time.Millisecond)
	termAt := time.Now()
	if err := servers[0].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	killAt := time.Now()
	if err := servers[1].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	close(stop)
	workers.Wait()

	all := snapshot()
	summary := balancingSummary(all, ports, termAt, killAt)
	t.Log(summary)
	before := map[int]int{}
	total := 0
	for _, c := range all {
		order := slices.Clone(c.result.Order)
		sort.Ints(order)
		for i, v := range order {
			if v != i {
				t.Fatalf("not a permutation: %v", c.result.Order)
			}
		}
		if c.start.After(warmEnd) && c.start.Before(termAt) {
			before[c.port]++
			total++
		}
		if c.port == ports[0] && c.start.After(termAt.Add(drainedWithin)) {
			t.Errorf("a call started %v after SIGTERM reached the drained replica", c.start.Sub(termAt))
		}
		if c.port == ports[1] && c.start.After(killAt.Add(drainedWithin)) {
			t.Errorf("a call started %v after SIGKILL reached the killed replica", c.start.Sub(killAt))
		}
	}
	for _, p := range ports {
		if before[p]*6 < total {
			t.Errorf("replica %d took %d of %d calls before the drain", p, before[p], total)
		}
	}
	late, lateReranked := 0, 0
	for _, c := range all {
		if c.start.After(killAt.Add(drainedWithin)) {
			late++
			if c.result.Outcome == lychee.Reranked && c.port == ports[2] {
				lateReranked++
			}
		}
	}
	if late == 0 || lateReranked*2 < late {
		t.Errorf("after the kill: %d/%d reranked by the survivor", lateReranked, late)
	}
	servers[0].stop() // waits for the drained replica's exit
	if code := servers[0].cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the drained replica exited with %d", code)
	}
	if t.Failed() {
		t.Log(summary)
	}
}

func balancingSummary(calls []liveCall, ports []int, termAt, killAt time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "balancing: %d searches\n", len(calls))
	names := []string{"drained (SIGTERM)", "killed (SIGKILL)", "survivor"}
	for i, p := range ports {
		var pre, mid, post int
		var last time.Time
		for _, c := range calls {
			if c.port != p {
				continue
			}
			switch {
			case c.start.Before(termAt):
				pre++
			case c.start.Before(killAt):
				mid++
			default:
				post++
			}
			if c.start.After(last) {
				last = c.start
			}
		}
		rel := ""
		if i == 0 {
			rel = fmt.Sprintf("last call started %v after SIGTERM", last.Sub(termAt).Round(time.Millisecond))
		} else if i == 1 {
			rel = fmt.Sprintf("last call started %v after SIGKILL", last.Sub(killAt).Round(time.Millisecond))
		}
		fmt.Fprintf(&b, "  replica %d %-18s before/after SIGTERM/after SIGKILL: %d / %d / %d  %s\n", p, names[i],
			pre, mid, post, rel)
	}
	outcomes := map[string]int{}
	var slowest time.Duration
	for _, c := range calls {
		outcomes[c.result.Outcome.String()]++
		slowest = max(slowest, c.result.Elapsed)
	}
	fmt.Fprintf(&b, "  outcomes: %v, slowest search %v", outcomes, slowest.Round(time.Millisecond))
	return b.String()
}
