package ai.lychee.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;

/**
 * Against a live server started with {@code LYCHEE_AUTH_TOKEN}: the right token is served, a
 * missing or wrong one is UNAUTHENTICATED, health needs none. Runs only with env
 * {@code LYCHEE_LIVE_AUTH=1} (or {@code -Dlychee.liveAuth=true}), until the server implements auth.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class AuthServerIntegrationTest {
  private static final String TOKEN = "secret";
  private LycheeServerProcess server;

  @BeforeAll
  void startServer() throws Exception {
    Assumptions.assumeTrue("1".equals(System.getenv("LYCHEE_LIVE_AUTH")) || Boolean.getBoolean("lychee.liveAuth"),
        "LYCHEE_LIVE_AUTH=1 not set");
    Assumptions.assumeFalse(Boolean.getBoolean("lychee.skipServerTests"), "lychee.skipServerTests set");
    server = LycheeServerProcess.start("auth", Map.of("LYCHEE_AUTH_TOKEN", TOKEN));
  }

  @AfterAll
  void stopServer() throws Exception {
    if (server != null) {
      server.close();
    }
  }

  private LycheeRerankClient client(String token) {
    LycheeRerankClient.Builder b = LycheeRerankClient.newBuilder(server.target()).deadline(Duration.ofSeconds(60));
    return token == null ? b.build() : b.bearerToken(token).allowBearerTokenOverPlaintext().build();
  }

  @Test
  void theRightTokenIsServed() {
    try (LycheeRerankClient c = client(TOKEN)) {
      assertEquals(1, c.rerankTexts("red shoes", List.of("a red shoe")).getResultsCount());
    }
  }

  @Test
  void aMissingOrWrongTokenIsUnauthenticated() {
    for (String token : new String[] {null, "not-" + TOKEN}) {
      try (LycheeRerankClient c = client(token)) {
        assertThrows(LycheeUnauthenticatedException.class, () -> c.rerankTexts("red shoes", List.of("a red shoe")),
            "token " + token);
      }
    }
  }

  @Test
  void healthNeedsNoToken() {
    ManagedChannel ch = Grpc.newChannelBuilder(server.target(), InsecureChannelCredentials.create()).build();
    try {
      HealthCheckResponse r = HealthGrpc.newBlockingStub(ch).withDeadlineAfter(10, TimeUnit.SECONDS)
          .check(HealthCheckRequest.getDefaultInstance());
      assertEquals(HealthCheckResponse.ServingStatus.SERVING, r.getStatus());
    } finally {
      ch.shutdownNow();
    }
  }
}
