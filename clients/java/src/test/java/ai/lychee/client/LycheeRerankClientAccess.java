package ai.lychee.client;

import java.time.Duration;
import java.util.Map;

/** Test access to the client's package-private service config, for channels that tests build themselves. */
public final class LycheeRerankClientAccess {
  private LycheeRerankClientAccess() {}

  /** The default retry policy (4 attempts on UNAVAILABLE), no load-balancing policy. */
  public static Map<String, Object> serviceConfig() {
    return LycheeRerankClient.serviceConfig(4, Duration.ofMillis(100), Duration.ofSeconds(2), 2.0, null);
  }
}
