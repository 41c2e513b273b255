package ai.lychee.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

/**
 * A failed call to the lychee reranker: the canonical gRPC status code, the server's message, and
 * the {@code google.rpc.Status} details when the server sent any.
 *
 * <p>The client retries only {@link Status.Code#UNAVAILABLE}, through its service config. Subclasses
 * by code: {@code INVALID_ARGUMENT} is {@link LycheeInvalidArgumentException} (with the field
 * violations), {@code UNAUTHENTICATED} is {@link LycheeUnauthenticatedException}, and
 * {@code RESOURCE_EXHAUSTED} with a retry delay is {@link LycheeOverloadedException}.
 */
public class LycheeException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;
  private final String statusDescription;
  private final transient com.google.rpc.Status statusProto;

  protected LycheeException(
      Status.Code code, String statusDescription, com.google.rpc.Status statusProto, Throwable cause) {
    super(code + (statusDescription == null || statusDescription.isEmpty() ? "" : ": " + statusDescription), cause);
    this.code = code;
    this.statusDescription = statusDescription == null ? "" : statusDescription;
    this.statusProto = statusProto;
  }

  /** Creates an exception that did not come from the server (e.g. a stream that ended early). */
  public LycheeException(Status.Code code, String description) {
    this(code, description, null, null);
  }

  /** Creates an exception that did not come from the server, with its cause. */
  public LycheeException(Status.Code code, String description, Throwable cause) {
    this(code, description, null, cause);
  }

  /** The canonical gRPC status code. */
  public Status.Code getCode() {
    return code;
  }

  /** The status message sent by the server (or produced locally by gRPC), possibly empty. */
  public String getStatusDescription() {
    return statusDescription;
  }

  /** The full {@code google.rpc.Status} sent by the server, or {@code null} if it sent no details. */
  public com.google.rpc.Status getStatusProto() {
    return statusProto;
  }

  /** True for the one code worth retrying (UNAVAILABLE: the model is loading or the server is draining). */
  public boolean isRetryable() {
    return code == Status.Code.UNAVAILABLE;
  }

  /**
   * Converts any throwable from a gRPC call into a {@link LycheeException} (or
   * {@link LycheeInvalidArgumentException} for INVALID_ARGUMENT). A {@code LycheeException} is
   * returned as is. Useful with the StreamObserver-based API, whose observers get raw gRPC errors.
   */
  public static LycheeException from(Throwable t) {
    if (t instanceof LycheeException le) {
      return le;
    }
    Status status = Status.fromThrowable(t);
    // Walks the cause chain; null when the server sent no grpc-status-details-bin trailer.
    com.google.rpc.Status proto = t == null ? null : StatusProto.fromThrowable(t);
    String description = status.getDescription();
    switch (status.getCode()) {
      case INVALID_ARGUMENT:
        return new LycheeInvalidArgumentException(description, proto, fieldViolations(proto), t);
      case UNAUTHENTICATED:
        return new LycheeUnauthenticatedException(description, proto, t);
      case RESOURCE_EXHAUSTED:
        Optional<Duration> delay = retryDelay(proto);
        if (delay.isPresent()) {
          return new LycheeOverloadedException(description, proto, delay.get(), t);
        }
        break;
      default:
        break;
    }
    return new LycheeException(status.getCode(), description, proto, t);
  }

  /** The delay of the first {@code google.rpc.RetryInfo} detail, if there is one that parses. */
  static Optional<Duration> retryDelay(com.google.rpc.Status proto) {
    if (proto == null) {
      return Optional.empty();
    }
    for (Any detail : proto.getDetailsList()) {
      if (!detail.is(RetryInfo.class)) {
        continue;
      }
      try {
        com.google.protobuf.Duration d = detail.unpack(RetryInfo.class).getRetryDelay();
        return Optional.of(Duration.ofSeconds(d.getSeconds(), d.getNanos()));
      } catch (InvalidProtocolBufferException e) {
        // A detail that claims to be RetryInfo but does not parse: look for another.
      }
    }
    return Optional.empty();
  }

  static List<FieldViolation> fieldViolations(com.google.rpc.Status proto) {
    List<FieldViolation> out = new ArrayList<>();
    if (proto == null) {
      return out;
    }
    for (Any detail : proto.getDetailsList()) {
      if (!detail.is(BadRequest.class)) {
        continue;
      }
      try {
        for (BadRequest.FieldViolation v : detail.unpack(BadRequest.class).getFieldViolationsList()) {
          out.add(new FieldViolation(v.getField(), v.getDescription()));
        }
      } catch (InvalidProtocolBufferException e) {
        // A detail that claims to be a BadRequest but does not parse: ignore it, keep the status.
      }
    }
    return out;
  }
}
