package ai.lychee.client;

import java.util.Objects;

/**
 * One {@code google.rpc.BadRequest.FieldViolation} from an {@code INVALID_ARGUMENT} error.
 *
 * @param field       the path of the offending field in the request, e.g. {@code documents[3].parts[0].image}
 * @param description why the server rejected it
 */
public record FieldViolation(String field, String description) {
  public FieldViolation {
    Objects.requireNonNull(field, "field");
    Objects.requireNonNull(description, "description");
  }

  @Override
  public String toString() {
    return field + ": " + description;
  }
}
