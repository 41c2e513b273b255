package ai.lychee.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.SecurityLevel;
import io.grpc.Status;
import java.util.concurrent.Executor;

/**
 * Sends {@code authorization: Bearer <token>} on every call. Unless allowed, it refuses to send the
 * token over a connection without privacy and integrity (plaintext), where anyone on the path could
 * read it; the call then fails with UNAUTHENTICATED before anything is sent.
 */
final class BearerTokenCredentials extends CallCredentials {
  static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final String header;
  private final boolean allowPlaintext;

  BearerTokenCredentials(String token, boolean allowPlaintext) {
    this.header = "Bearer " + checkToken(token);
    this.allowPlaintext = allowPlaintext;
  }

  /** Refuses a token that cannot be an HTTP/2 header value, naming the setting. */
  static String checkToken(String token) {
    if (token == null || token.isEmpty()) {
      throw new IllegalArgumentException("bearerToken: empty token");
    }
    for (int i = 0; i < token.length(); i++) {
      char c = token.charAt(i);
      if (c < 0x21 || c > 0x7e) {
        throw new IllegalArgumentException(String.format(
            "bearerToken: character U+%04X at %d; only visible ASCII is allowed in a bearer token", (int) c, i));
      }
    }
    return token;
  }

  @Override
  public void applyRequestMetadata(RequestInfo info, Executor appExecutor, MetadataApplier applier) {
    if (!allowPlaintext && info.getSecurityLevel() != SecurityLevel.PRIVACY_AND_INTEGRITY) {
      applier.fail(Status.UNAUTHENTICATED.withDescription("bearer token not sent: the connection to "
          + info.getAuthority() + " has no transport security (use TLS, or allowBearerTokenOverPlaintext() "
          + "for a loopback sidecar or a test)"));
      return;
    }
    Metadata md = new Metadata();
    md.put(AUTHORIZATION, header);
    applier.apply(md);
  }

  @Override
  public String toString() {
    return "BearerTokenCredentials{token=<redacted>}";
  }
}
