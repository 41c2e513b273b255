package ai.lychee.client;

import io.grpc.Status;

/**
 * The server requires a bearer token and none, or a wrong one, was sent ({@code UNAUTHENTICATED}).
 * Set it with {@link LycheeRerankClient.Builder#bearerToken(String)}. Retrying with the same token
 * cannot succeed.
 */
public class LycheeUnauthenticatedException extends LycheeException {
  private static final long serialVersionUID = 1L;

  LycheeUnauthenticatedException(String description, com.google.rpc.Status statusProto, Throwable cause) {
    super(Status.Code.UNAUTHENTICATED, description, statusProto, cause);
  }
}
