package ai.lychee.client;

import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.Part;
import ai.lychee.grpc.v1.Query;
import com.google.protobuf.ByteString;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * Builders for the content of a query or a document: ordered lists of text and image parts.
 *
 * <pre>{@code
 * Query q = Parts.query(Parts.image(photoBytes), Parts.text("same sofa under 5000"));
 * Document d = Parts.document("sku-42", Parts.image(mainImage), Parts.text("Linen 3-seat sofa"));
 * }</pre>
 *
 * Text parts are concatenated by the server with no separator; images are encoded JPEG, PNG, WebP
 * or GIF bytes (the server detects the format).
 */
public final class Parts {
  private Parts() {}

  /** A text part. */
  public static Part text(String text) {
    return Part.newBuilder().setText(Objects.requireNonNull(text, "text")).build();
  }

  /** An image part from encoded JPEG/PNG/WebP/GIF bytes. */
  public static Part image(byte[] encoded) {
    return Part.newBuilder().setImage(ByteString.copyFrom(Objects.requireNonNull(encoded, "encoded"))).build();
  }

  /** An image part from encoded bytes already in a ByteString (no copy). */
  public static Part image(ByteString encoded) {
    return Part.newBuilder().setImage(Objects.requireNonNull(encoded, "encoded")).build();
  }

  /** An image part read from a file (JPEG/PNG/WebP/GIF). */
  public static Part imageFile(Path file) {
    try {
      return image(ByteString.copyFrom(Files.readAllBytes(file)));
    } catch (IOException e) {
      throw new UncheckedIOException("cannot read image " + file, e);
    }
  }

  /** A query made of the given parts, in order. */
  public static Query query(Part... parts) {
    return Query.newBuilder().addAllParts(Arrays.asList(parts)).build();
  }

  /** A query made of the given parts, in order. */
  public static Query query(List<Part> parts) {
    return Query.newBuilder().addAllParts(parts).build();
  }

  /** A text-only query. */
  public static Query textQuery(String text) {
    return query(text(text));
  }

  /** An image-only query. */
  public static Query imageQuery(byte[] encoded) {
    return query(image(encoded));
  }

  /** A document with an id (may be empty) and the given parts, in order. */
  public static Document document(String id, Part... parts) {
    return Document.newBuilder().setId(id == null ? "" : id).addAllParts(Arrays.asList(parts)).build();
  }

  /** A document with an id (may be empty) and the given parts, in order. */
  public static Document document(String id, List<Part> parts) {
    return Document.newBuilder().setId(id == null ? "" : id).addAllParts(parts).build();
  }

  /** A text-only document. */
  public static Document textDocument(String id, String text) {
    return document(id, text(text));
  }

  /** An image-only document. */
  public static Document imageDocument(String id, byte[] encoded) {
    return document(id, image(encoded));
  }

  /** Text-only documents with empty ids; results refer to them by index. */
  public static List<Document> textDocuments(List<String> texts) {
    List<Document> out = new ArrayList<>(texts.size());
    for (String t : texts) {
      out.add(textDocument("", t));
    }
    return out;
  }

  /** Splits documents into consecutive chunks of at most {@code size}, for streaming. */
  public static List<List<Document>> chunks(List<Document> documents, int size) {
    if (size <= 0) {
      throw new IllegalArgumentException("chunk size must be positive: " + size);
    }
    List<List<Document>> out = new ArrayList<>();
    for (int i = 0; i < documents.size(); i += size) {
      out.add(List.copyOf(documents.subList(i, Math.min(documents.size(), i + size))));
    }
    return out;
  }
}
