package ai.lychee.client;

import ai.lychee.grpc.v1.Query;
import ai.lychee.grpc.v1.RerankRequest;
import ai.lychee.grpc.v1.StreamOptions;
import ai.lychee.grpc.v1.Truncation;
import java.util.Objects;

/**
 * The optional fields shared by a rerank request and a stream's options: instruction, top_n,
 * return_documents, truncation, min_score and max_tokens_per_document. Immutable.
 *
 * <pre>{@code
 * RerankOptions opts = RerankOptions.newBuilder()
 *     .topN(10)
 *     .minScore(0.5f)                          // leave out results below 0.5
 *     .truncation(Truncation.TRUNCATION_END)   // cut over-long texts instead of refusing
 *     .maxTokensPerDocument(512)
 *     .build();
 * RerankResponse r = client.rerankTexts("retro denim jacket", titles, opts);
 * }</pre>
 */
public final class RerankOptions {
  private static final RerankOptions DEFAULTS = newBuilder().build();

  private final String instruction;
  private final int topN;
  private final boolean returnDocuments;
  private final Truncation truncation;
  private final Float minScore;
  private final int maxTokensPerDocument;

  private RerankOptions(Builder b) {
    this.instruction = b.instruction;
    this.topN = b.topN;
    this.returnDocuments = b.returnDocuments;
    this.truncation = b.truncation;
    this.minScore = b.minScore;
    this.maxTokensPerDocument = b.maxTokensPerDocument;
  }

  /** The server's defaults for everything. */
  public static RerankOptions defaults() {
    return DEFAULTS;
  }

  public static Builder newBuilder() {
    return new Builder();
  }

  /** Sets these options on a request builder (unset ones are left as they are). */
  public RerankRequest.Builder applyTo(RerankRequest.Builder b) {
    if (!instruction.isEmpty()) {
      b.setInstruction(instruction);
    }
    if (topN != 0) {
      b.setTopN(topN);
    }
    if (returnDocuments) {
      b.setReturnDocuments(true);
    }
    if (truncation != Truncation.TRUNCATION_UNSPECIFIED) {
      b.setTruncation(truncation);
    }
    if (minScore != null) {
      b.setMinScore(minScore);
    }
    if (maxTokensPerDocument != 0) {
      b.setMaxTokensPerDocument(maxTokensPerDocument);
    }
    return b;
  }

  /** Sets these options on stream options (top_n and min_score then apply to the final ranking). */
  public StreamOptions.Builder applyTo(StreamOptions.Builder b) {
    if (!instruction.isEmpty()) {
      b.setInstruction(instruction);
    }
    if (topN != 0) {
      b.setTopN(topN);
    }
    if (returnDocuments) {
      b.setReturnDocuments(true);
    }
    if (truncation != Truncation.TRUNCATION_UNSPECIFIED) {
      b.setTruncation(truncation);
    }
    if (minScore != null) {
      b.setMinScore(minScore);
    }
    if (maxTokensPerDocument != 0) {
      b.setMaxTokensPerDocument(maxTokensPerDocument);
    }
    return b;
  }

  /** The first message's options of a RerankStream for {@code query}. */
  public StreamOptions toStreamOptions(Query query) {
    return applyTo(StreamOptions.newBuilder().setQuery(Objects.requireNonNull(query, "query"))).build();
  }

  @Override
  public String toString() {
    return "RerankOptions{instruction=" + (instruction.isEmpty() ? "<default>" : instruction) + ", topN=" + topN
        + ", returnDocuments=" + returnDocuments + ", truncation=" + truncation + ", minScore=" + minScore
        + ", maxTokensPerDocument=" + maxTokensPerDocument + "}";
  }

  /** Builder of {@link RerankOptions}; every setting defaults to the server's. */
  public static final class Builder {
    private String instruction = "";
    private int topN;
    private boolean returnDocuments;
    private Truncation truncation = Truncation.TRUNCATION_UNSPECIFIED;
    private Float minScore;
    private int maxTokensPerDocument;

    private Builder() {}

    /** The task instruction; empty means the server's default. */
    public Builder instruction(String instruction) {
      this.instruction = Objects.requireNonNull(instruction, "instruction");
      return this;
    }

    /** Keep only the best {@code n} results; 0 keeps all. */
    public Builder topN(int n) {
      this.topN = nonNegative("topN", n);
      return this;
    }

    /** Echo each document on its result. */
    public Builder returnDocuments(boolean returnDocuments) {
      this.returnDocuments = returnDocuments;
      return this;
    }

    /** Over-long document texts: refuse ({@code TRUNCATION_NONE}) or cut ({@code TRUNCATION_END}). */
    public Builder truncation(Truncation truncation) {
      if (Objects.requireNonNull(truncation, "truncation") == Truncation.UNRECOGNIZED) {
        throw new IllegalArgumentException("truncation: UNRECOGNIZED is not a value to send");
      }
      this.truncation = truncation;
      return this;
    }

    /** Leave out results scoring below {@code score} (scores are in [0, 1]); counted in dropped_documents. */
    public Builder minScore(float score) {
      if (Float.isNaN(score) || score < 0f || score > 1f) {
        throw new IllegalArgumentException("minScore: " + score + " is not in [0, 1]");
      }
      this.minScore = score;
      return this;
    }

    /** Forget a {@link #minScore(float)}: keep every result. */
    public Builder clearMinScore() {
      this.minScore = null;
      return this;
    }

    /** Token limit per document for this request (0: the server's); the server never goes above its own. */
    public Builder maxTokensPerDocument(int tokens) {
      this.maxTokensPerDocument = nonNegative("maxTokensPerDocument", tokens);
      return this;
    }

    public RerankOptions build() {
      return new RerankOptions(this);
    }

    // The proto fields are uint32: a negative int would reach the server as a huge number.
    private static int nonNegative(String field, int v) {
      if (v < 0) {
        throw new IllegalArgumentException(field + ": " + v + " is negative");
      }
      return v;
    }
  }
}
