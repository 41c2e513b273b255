package ai.lychee.client;

import io.grpc.Status;
import java.util.List;
import java.util.stream.Collectors;

/**
 * The server rejected the request as {@code INVALID_ARGUMENT}. {@link #getViolations()} lists the
 * {@code google.rpc.BadRequest} field violations, each naming a field path such as
 * {@code documents[1].parts[0].text}. Do not retry: fix or drop the offending document.
 */
public class LycheeInvalidArgumentException extends LycheeException {
  private static final long serialVersionUID = 1L;

  private final List<FieldViolation> violations;

  LycheeInvalidArgumentException(
      String description, com.google.rpc.Status statusProto, List<FieldViolation> violations, Throwable cause) {
    super(Status.Code.INVALID_ARGUMENT, description, statusProto, cause);
    this.violations = List.copyOf(violations);
  }

  /** The field violations, in the server's order; empty if the server sent no BadRequest detail. */
  public List<FieldViolation> getViolations() {
    return violations;
  }

  /** The field paths of the violations, e.g. {@code [documents[0].parts[0].image]}. */
  public List<String> getFields() {
    return violations.stream().map(FieldViolation::field).collect(Collectors.toList());
  }

  /** True if some violation names exactly this field path. */
  public boolean hasViolation(String field) {
    return violations.stream().anyMatch(v -> v.field().equals(field));
  }

  @Override
  public String getMessage() {
    String base = super.getMessage();
    return violations.isEmpty() ? base : base + " " + violations;
  }
}
