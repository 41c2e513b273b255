package ai.lychee.examples.search;

import ai.lychee.client.Parts;
import ai.lychee.client.failopen.FailOpenReranker;
import ai.lychee.client.failopen.FailOpenResult;
import ai.lychee.examples.search.Catalogue.Product;
import ai.lychee.grpc.v1.Document;
import ai.lychee.grpc.v1.Part;
import ai.lychee.grpc.v1.Query;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.standard.StandardAnalyzer;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.apache.lucene.document.Field;
import org.apache.lucene.document.StoredField;
import org.apache.lucene.document.TextField;
import org.apache.lucene.index.DirectoryReader;
import org.apache.lucene.index.IndexWriter;
import org.apache.lucene.index.IndexWriterConfig;
import org.apache.lucene.index.Term;
import org.apache.lucene.search.BooleanClause;
import org.apache.lucene.search.BooleanQuery;
import org.apache.lucene.search.IndexSearcher;
import org.apache.lucene.search.ScoreDoc;
import org.apache.lucene.search.TermQuery;
import org.apache.lucene.store.ByteBuffersDirectory;

/**
 * Search in two stages: Lucene BM25 over the titles retrieves the top {@code retrieve} products, then
 * the fail-open reranker reorders them (query and product images included) within the latency budget.
 * Whatever the reranker does, the answer comes in time: reranked, partially reranked, or BM25's order.
 */
public final class SearchService implements AutoCloseable {
  /** One search: BM25's order, the served order, and what the reranker did. */
  public record Result(List<Product> bm25, List<Product> served, FailOpenResult rerank, Duration elapsed) { }

  private final List<Product> products;
  private final FailOpenReranker reranker;
  private final int retrieve;
  private final Analyzer analyzer = new StandardAnalyzer();
  private final ByteBuffersDirectory index = new ByteBuffersDirectory();
  private final DirectoryReader reader;
  private final IndexSearcher searcher; // BM25Similarity is Lucene's default

  public SearchService(List<Product> products, FailOpenReranker reranker, int retrieve) {
    this.products = products;
    this.reranker = reranker;
    this.retrieve = retrieve;
    try (IndexWriter writer = new IndexWriter(index, new IndexWriterConfig(analyzer))) {
      for (int i = 0; i < products.size(); i++) {
        org.apache.lucene.document.Document doc = new org.apache.lucene.document.Document();
        doc.add(new TextField("title", products.get(i).title(), Field.Store.NO));
        doc.add(new StoredField("pos", i));
        writer.addDocument(doc);
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    try {
      reader = DirectoryReader.open(index);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    searcher = new IndexSearcher(reader);
  }

  /** BM25's top {@code retrieve} for the query text, best first (empty text: nothing). */
  public List<Product> bm25(String text) {
    BooleanQuery.Builder q = new BooleanQuery.Builder();
    int terms = 0;
    try (TokenStream ts = analyzer.tokenStream("title", text)) {
      CharTermAttribute term = ts.addAttribute(CharTermAttribute.class);
      ts.reset();
      while (ts.incrementToken()) {
        q.add(new TermQuery(new Term("title", term.toString())), BooleanClause.Occur.SHOULD);
        terms++;
      }
      ts.end();
      if (terms == 0) {
        return List.of();
      }
      List<Product> out = new ArrayList<>();
      for (ScoreDoc hit : searcher.search(q.build(), retrieve).scoreDocs) {
        out.add(products.get(searcher.storedFields().document(hit.doc).getField("pos").numericValue().intValue()));
      }
      return out;
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** Retrieves with BM25 on {@code text}, then reranks against the text and {@code image} (may be null). */
  public Result search(String text, byte[] image, Duration budget) {
    long t0 = System.nanoTime();
    List<Product> bm25 = bm25(text);
    List<Part> queryParts = new ArrayList<>();
    if (image != null) {
      queryParts.add(Parts.image(image));
    }
    if (!text.isEmpty()) {
      queryParts.add(Parts.text(text));
    }
    Query query = Parts.query(queryParts);
    List<Document> candidates = bm25.stream().map(SearchService::document).toList();
    FailOpenResult rerank = reranker.rerank(query, candidates, budget);
    return new Result(bm25, rerank.apply(bm25), rerank, Duration.ofNanos(System.nanoTime() - t0));
  }

  /** A product as the reranker reads it: its image, then its title. */
  static Document document(Product p) {
    List<Part> parts = new ArrayList<>();
    if (p.image() != null) {
      parts.add(Parts.image(p.image()));
    }
    if (!p.title().isEmpty()) {
      parts.add(Parts.text(p.title()));
    }
    return Parts.document(p.id(), parts);
  }

  @Override
  public void close() throws IOException {
    reader.close();
    index.close();
  }
}
