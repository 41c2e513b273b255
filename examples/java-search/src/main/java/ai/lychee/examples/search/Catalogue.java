package ai.lychee.examples.search;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The product catalogue and its labelled queries, read from what {@code lychee-grpc make-eval-data DIR}
 * writes: {@code DIR/data.jsonl} (one query per line with its graded candidates) and {@code DIR/images/}.
 * Every candidate of every query is a product of the catalogue; a query's labels grade its own candidates
 * (3 exact, 2 substitute, 1 complement, 0 irrelevant), and any other product counts as 0 for it.
 */
public record Catalogue(List<Product> products, List<LabelledQuery> queries) {
  /** A product: its id, title (may be empty: some products have only an image) and image bytes (or null). */
  public record Product(String id, String title, byte[] image) { }

  /** A query: text and/or image, and the grade of each of its candidates by product id. */
  public record LabelledQuery(String id, String text, byte[] image, Map<String, Integer> labels) { }

  public static Catalogue load(Path dir) {
    Path data = dir.resolve("data.jsonl");
    List<Product> products = new ArrayList<>();
    List<LabelledQuery> queries = new ArrayList<>();
    try {
      for (String line : Files.readAllLines(data, StandardCharsets.UTF_8)) {
        if (line.isBlank()) {
          continue;
        }
        JsonObject q = JsonParser.parseString(line).getAsJsonObject();
        JsonObject query = q.getAsJsonObject("query");
        Map<String, Integer> labels = new LinkedHashMap<>();
        for (JsonElement e : q.getAsJsonArray("candidates")) {
          JsonObject c = e.getAsJsonObject();
          String id = c.get("id").getAsString();
          labels.put(id, c.get("label").getAsInt());
          products.add(new Product(id, c.has("text") ? c.get("text").getAsString() : "", image(dir, c)));
        }
        queries.add(new LabelledQuery(q.get("query_id").getAsString(),
            query.has("text") ? query.get("text").getAsString() : "", image(dir, query),
            Collections.unmodifiableMap(labels)));
      }
    } catch (IOException e) {
      throw new UncheckedIOException("cannot read the catalogue " + data + " (lychee-grpc make-eval-data DIR)", e);
    }
    return new Catalogue(List.copyOf(products), List.copyOf(queries));
  }

  private static byte[] image(Path dir, JsonObject o) throws IOException {
    if (o.has("image")) {
      return Files.readAllBytes(dir.resolve(o.get("image").getAsString()));
    }
    if (o.has("image_base64")) {
      return Base64.getDecoder().decode(o.get("image_base64").getAsString());
    }
    return null;
  }
}
