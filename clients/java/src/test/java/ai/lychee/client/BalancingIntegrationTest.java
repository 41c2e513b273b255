package ai.lychee.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import ai.lychee.client.failopen.FailOpenReranker;
import ai.lychee.client.failopen.FailOpenResult;
import ai.lychee.client.failopen.Outcome;
import ai.lychee.grpc.v1.Document;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.EquivalentAddressGroup;
import io.grpc.ForwardingClientCall;
import io.grpc.ForwardingClientCallListener;
import io.grpc.Grpc;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.NameResolver;
import io.grpc.NameResolverProvider;
import io.grpc.NameResolverRegistry;
import io.grpc.Status;
import io.grpc.internal.DnsNameResolverProvider;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.URI;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Three real server processes behind one {@code dns:///} name, with the client's defaults for such
 * a target (round_robin + client-side health checking of lychee.v1.RerankService) and fail-open
 * searches from three threads: traffic spreads over all three; one replica gets SIGTERM mid-traffic,
 * another SIGKILL; no search fails, and {@link #DRAINED_WITHIN} after each event no call reaches
 * that replica. The name is answered by a resolver this test controls (a static list of the three
 * ports); every other name still goes to DNS.
 */
class BalancingIntegrationTest {
  static final String HOST = "lychee-replicas.test";
  /** After SIGTERM (or SIGKILL), no call may start on that replica once this much time has passed. */
  static final Duration DRAINED_WITHIN = Duration.ofSeconds(1);

  /** One search: when it started, where its (last) attempt went, what it served. */
  record Call(long startNanos, int port, FailOpenResult result) { }

  /** Overrides the "dns" scheme for {@link #HOST} only, with a static list of addresses. */
  static final class StaticReplicas extends NameResolverProvider {
    final List<InetSocketAddress> addresses;
    final NameResolverProvider dns = new DnsNameResolverProvider();

    StaticReplicas(List<InetSocketAddress> addresses) {
      this.addresses = addresses;
    }

    @Override
    protected boolean isAvailable() {
      return true;
    }

    @Override
    protected int priority() {
      return 9; // above grpc's own DNS resolver (5)
    }

    @Override
    public String getDefaultScheme() {
      return "dns";
    }

    @Override
    public NameResolver newNameResolver(URI uri, NameResolver.Args args) {
      if (!"dns".equals(uri.getScheme()) || !uri.getPath().startsWith("/" + HOST + ":")) {
        return dns.newNameResolver(uri, args);
      }
      return new NameResolver() {
        @Override
        public String getServiceAuthority() {
          return HOST;
        }

        @Override
        public void start(Listener2 listener) {
          List<EquivalentAddressGroup> groups = addresses.stream().map(EquivalentAddressGroup::new).toList();
          listener.onResult(ResolutionResult.newBuilder().setAddresses(groups).build());
        }

        @Override
        public void shutdown() { }
      };
    }
  }

  /** Records the remote port of each call (the committed attempt's transport). */
  static final class PeerRecorder implements ClientInterceptor {
    final ThreadLocal<int[]> lastPort = ThreadLocal.withInitial(() -> new int[] {-1});

    @Override
    public <Q, R> ClientCall<Q, R> interceptCall(MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
      int[] slot = lastPort.get();
      slot[0] = -1;
      ClientCall<Q, R> call = next.newCall(method, options);
      return new ForwardingClientCall.SimpleForwardingClientCall<>(call) {
        @Override
        public void start(Listener<R> listener, Metadata headers) {
          super.start(new ForwardingClientCallListener.SimpleForwardingClientCallListener<>(listener) {
            @Override
            public void onClose(Status status, Metadata trailers) {
              SocketAddress remote = call.getAttributes().get(Grpc.TRANSPORT_ATTR_REMOTE_ADDR);
              if (remote instanceof InetSocketAddress inet) {
                slot[0] = inet.getPort();
              }
              super.onClose(status, trailers);
            }
          }, headers);
        }
      };
    }
  }

  @Test
  @Timeout(value = 300, unit = TimeUnit.SECONDS)
  void trafficSpreadsAndLeavesDrainedAndKilledReplicas() throws Exception {
    Assumptions.assumeFalse(Boolean.getBoolean("lychee.skipServerTests"), "lychee.skipServerTests set");
    List<LycheeServerProcess> servers = startThree();
    StaticReplicas resolver = new StaticReplicas(servers.stream()
        .map(s -> new InetSocketAddress("127.0.0.1", s.port())).toList());
    NameResolverRegistry.getDefaultRegistry().register(resolver);
    PeerRecorder peers = new PeerRecorder();
    ExecutorService pool = Executors.newFixedThreadPool(3);
    try (LycheeRerankClient client = LycheeRerankClient.newBuilder("dns:///" + HOST + ":50051")
        .deadline(Duration.ofSeconds(10)).intercept(peers).build()) {
      FailOpenReranker reranker = FailOpenReranker.newBuilder(client).budget(Duration.ofSeconds(5)).build();
      List<Call> calls = Collections.synchronizedList(new ArrayList<>());
      List<Throwable> thrown = Collections.synchronizedList(new ArrayList<>());
      AtomicBoolean stop = new AtomicBoolean();
      List<Document> docs = Parts.textDocuments(List.of("Vintage wash denim jacket", "Organic green tea",
          "Retro corduroy jacket", "Leather boots", "Denim shirt", "Kitchen knife", "Blue jeans", "Wool scarf"));
      List<Future<?>> workers = new ArrayList<>();
      for (int w = 0; w < 3; w++) {
        workers.add(pool.submit(() -> {
          while (!stop.get()) {
            long t0 = System.nanoTime();
            try {
              FailOpenResult r = reranker.rerank(Parts.textQuery("retro denim jacket"), docs);
              calls.add(new Call(t0, peers.lastPort.get()[0], r));
            } catch (Throwable t) {
              thrown.add(t);
            }
          }
        }));
      }

      LycheeServerProcess drained = servers.get(0);
      LycheeServerProcess killed = servers.get(1);
      LycheeServerProcess survivor = servers.get(2);
      awaitEachServed(calls, servers, Duration.ofSeconds(30));
      long warmEnd = System.nanoTime();
      Thread.sleep(1500);

      long termAt = System.nanoTime();
      drained.terminate();
      Thread.sleep(3000);
      long killAt = System.nanoTime();
      killed.killNow();
      Thread.sleep(4000);
      stop.set(true);
      for (Future<?> f : workers) {
        f.get(30, TimeUnit.SECONDS);
      }

      List<Call> all = List.copyOf(calls);
      String summary = summary(all, servers, termAt, killAt);
      System.out.println(summary);
      if (!thrown.isEmpty()) {
        fail("a search threw: " + thrown.get(0) + "\n" + summary);
      }
      for (Call c : all) {
        int[] sorted = c.result().order().clone();
        java.util.Arrays.sort(sorted);
        for (int i = 0; i < sorted.length; i++) {
          assertEquals(i, sorted[i], "not a permutation: " + c.result());
        }
      }
      // Spread: before the drain, every replica took a share of the calls.
      Map<Integer, Long> before = all.stream().filter(c -> c.startNanos() < termAt && c.startNanos() >= warmEnd)
          .collect(Collectors.groupingBy(Call::port, Collectors.counting()));
      long total = before.values().stream().mapToLong(Long::longValue).sum();
      for (LycheeServerProcess s : servers) {
        long n = before.getOrDefault(s.port(), 0L);
        assertTrue(n * 6 >= total, "replica " + s.port() + " took " + n + " of " + total + " calls\n" + summary);
      }
      // Drained and killed replicas get no call once DRAINED_WITHIN has passed.
      long limit = DRAINED_WITHIN.toNanos();
      for (Call c : all) {
        if (c.port() == drained.port() && c.startNanos() > termAt + limit) {
          fail("a call started " + ms(c.startNanos() - termAt) + " ms after SIGTERM reached the drained replica\n"
              + summary);
        }
        if (c.port() == killed.port() && c.startNanos() > killAt + limit) {
          fail("a call started " + ms(c.startNanos() - killAt) + " ms after SIGKILL reached the killed replica\n"
              + summary);
        }
      }
      // The survivor keeps reranking (within the generous budget of a loaded 2-core machine).
      long late = all.stream().filter(c -> c.startNanos() > killAt + limit).count();
      long lateReranked = all.stream().filter(c -> c.startNanos() > killAt + limit)
          .filter(c -> c.result().outcome() == Outcome.RERANKED && c.port() == survivor.port()).count();
      assertTrue(late > 0 && lateReranked * 2 >= late, "after the kill: " + lateReranked + "/" + late
          + " reranked by the survivor\n" + summary);
      assertEquals(0, drained.awaitExit(Duration.ofSeconds(20)), "the drained replica's exit code");
    } finally {
      pool.shutdownNow();
      NameResolverRegistry.getDefaultRegistry().deregister(resolver);
      for (LycheeServerProcess s : servers) {
        s.close();
      }
    }
  }

  static List<LycheeServerProcess> startThree() throws Exception {
    ExecutorService starter = Executors.newFixedThreadPool(3);
    try {
      List<Future<LycheeServerProcess>> futures = new ArrayList<>();
      for (int i = 0; i < 3; i++) {
        String name = "replica-" + i;
        // One torch thread each: three servers and the JVM share a 2-core machine.
        futures.add(starter.submit(() -> LycheeServerProcess.start(name,
            Map.of("LYCHEE_TORCH_THREADS", "1", "LYCHEE_PREPROCESS_THREADS", "1"))));
      }
      List<LycheeServerProcess> out = new ArrayList<>();
      for (Future<LycheeServerProcess> f : futures) {
        out.add(f.get(LycheeServerProcess.STARTUP_TIMEOUT.toSeconds() + 30, TimeUnit.SECONDS));
      }
      return out;
    } finally {
      starter.shutdown();
    }
  }

  static void awaitEachServed(List<Call> calls, List<LycheeServerProcess> servers, Duration within)
      throws InterruptedException {
    long deadline = System.nanoTime() + within.toNanos();
    while (System.nanoTime() < deadline) {
      List<Integer> seen;
      synchronized (calls) {
        seen = calls.stream().map(Call::port).distinct().toList();
      }
      if (servers.stream().allMatch(s -> seen.contains(s.port()))) {
        return;
      }
      Thread.sleep(100);
    }
    fail("not every replica got a call within " + within);
  }

  static long ms(long nanos) {
    return TimeUnit.NANOSECONDS.toMillis(nanos);
  }

  /** Calls per replica and outcome in each phase, and when each replica last got a call. */
  static String summary(List<Call> calls, List<LycheeServerProcess> servers, long termAt, long killAt) {
    StringBuilder b = new StringBuilder("balancing: ").append(calls.size()).append(" searches\n");
    String[] names = {"drained (SIGTERM)", "killed (SIGKILL)", "survivor"};
    for (int i = 0; i < servers.size(); i++) {
      int port = servers.get(i).port();
      long pre = calls.stream().filter(c -> c.port() == port && c.startNanos() < termAt).count();
      long mid = calls.stream().filter(c -> c.port() == port && c.startNanos() >= termAt && c.startNanos() < killAt)
          .count();
      long post = calls.stream().filter(c -> c.port() == port && c.startNanos() >= killAt).count();
      long last = calls.stream().filter(c -> c.port() == port).mapToLong(Call::startNanos).max().orElse(0);
      String lastRel = i == 0 ? "last call started " + ms(last - termAt) + " ms after SIGTERM"
          : i == 1 ? "last call started " + ms(last - killAt) + " ms after SIGKILL" : "";
      b.append(String.format("  replica %d %-18s before/after SIGTERM/after SIGKILL: %d / %d / %d  %s%n",
          port, names[i], pre, mid, post, lastRel));
    }
    Map<String, Long> outcomes = new TreeMap<>(calls.stream()
        .collect(Collectors.groupingBy(c -> c.result().outcome().tag(), Collectors.counting())));
    b.append("  outcomes: ").append(outcomes);
    long worst = calls.stream().mapToLong(c -> c.result().elapsed().toMillis()).max().orElse(0);
    b.append(", slowest search ").append(worst).append(" ms");
    return b.toString();
  }
}
