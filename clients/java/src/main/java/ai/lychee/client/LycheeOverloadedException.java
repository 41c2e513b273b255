package ai.lychee.client;

import io.grpc.Status;
import java.time.Duration;

/**
 * The server refused the call because its queue or its concurrent requests are over their bound
 * ({@code RESOURCE_EXHAUSTED} with a {@code google.rpc.RetryInfo} detail). The client does not
 * retry it by itself: retrying at once is what keeps an overloaded server overloaded. Wait
 * {@link #retryAfter()} before trying again, try another replica, or shed the request:
 *
 * <pre>{@code
 * try {
 *   return client.rerank(request);
 * } catch (LycheeOverloadedException e) {
 *   Thread.sleep(e.retryAfter().toMillis()); // then one more try, within your own deadline
 *   return client.rerank(request);
 * }
 * }</pre>
 *
 * A {@code RESOURCE_EXHAUSTED} without RetryInfo (such as a response over
 * {@code maxInboundMessageSize}, produced by gRPC on the client) is a plain {@link LycheeException}:
 * waiting does not fix it.
 */
public class LycheeOverloadedException extends LycheeException {
  private static final long serialVersionUID = 1L;

  private final Duration retryAfter;

  LycheeOverloadedException(
      String description, com.google.rpc.Status statusProto, Duration retryAfter, Throwable cause) {
    super(Status.Code.RESOURCE_EXHAUSTED, description, statusProto, cause);
    this.retryAfter = retryAfter.isNegative() ? Duration.ZERO : retryAfter;
  }

  /** The delay the server asked for before the next try (never negative). */
  public Duration retryAfter() {
    return retryAfter;
  }

  @Override
  public String getMessage() {
    return super.getMessage() + " (retry after " + retryAfter + ")";
  }
}
