package lychee_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lychee-ai/lychee-grpc/clients/go/lychee"
)

var (
	infoOnce sync.Once
	info     *lychee.GetModelInfoResponse
	infoErr  error
)

func modelInfo(t *testing.T) *lychee.GetModelInfoResponse {
	t.Helper()
	infoOnce.Do(func() { info, infoErr = client.GetModelInfo(context.Background()) })
	if infoErr != nil {
		t.Fatalf("GetModelInfo: %v", infoErr)
	}
	return info
}

// pngImage encodes a w x h PNG: a gradient tinted by c, so that images differ.
func pngImage(t *testing.T, w, h int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{
				R: uint8((int(c.R) + x*255/w) / 2),
				G: uint8((int(c.G) + y*255/h) / 2),
				B: c.B,
				A: 255,
			})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var (
	red   = color.RGBA{R: 220, G: 30, B: 30, A: 255}
	green = color.RGBA{R: 30, G: 200, B: 60, A: 255}
	blue  = color.RGBA{R: 20, G: 40, B: 230, A: 255}
)

// checkRanking verifies the invariants of a ranking of n documents of which
// want results are returned: best first, distinct indices in [0, n), scores in
// [0, 1] equal to sigmoid(logit), bands matching the server's thresholds, ids
// echoed.
func checkRanking(t *testing.T, resp *lychee.RerankResponse, docs []*lychee.Document, want int) {
	t.Helper()
	res := resp.GetResults()
	if len(res) != want {
		t.Fatalf("got %d results, want %d", len(res), want)
	}
	th := modelInfo(t).GetBandThresholds()
	seen := make(map[uint32]bool, len(res))
	for i, r := range res {
		if int(r.GetIndex()) >= len(docs) {
			t.Fatalf("result %d: index %d out of range [0,%d)", i, r.GetIndex(), len(docs))
		}
		if seen[r.GetIndex()] {
			t.Fatalf("result %d: index %d repeated", i, r.GetIndex())
		}
		seen[r.GetIndex()] = true
		if got, want := r.GetId(), docs[r.GetIndex()].GetId(); got != want {
			t.Errorf("result %d (index %d): id %q, want %q", i, r.GetIndex(), got, want)
		}
		s := r.GetScore()
		if !(s >= 0 && s <= 1) {
			t.Errorf("result %d: score %v not in [0,1]", i, s)
		}
		if sig := 1 / (1 + math.Exp(-float64(r.GetLogit()))); math.Abs(sig-float64(s)) > 1e-4 {
			t.Errorf("result %d: score %v != sigmoid(logit %v) = %v", i, s, r.GetLogit(), sig)
		}
		wantBand := lychee.BandWeak
		switch {
		case s >= th.GetStrong():
			wantBand = lychee.BandStrong
		case s >= th.GetMedium():
			wantBand = lychee.BandMedium
		}
		if r.GetBand() != wantBand {
			t.Errorf("result %d: score %v band %v, want %v (thresholds strong %v medium %v)",
				i, s, r.GetBand(), wantBand, th.GetStrong(), th.GetMedium())
		}
		if i > 0 && res[i-1].GetScore() < s {
			t.Errorf("results not best first: [%d] %v < [%d] %v", i-1, res[i-1].GetScore(), i, s)
		}
	}
}

func TestGetModelInfo(t *testing.T) {
	needServer(t)
	mi := modelInfo(t)
	if !mi.GetRandomWeights() {
		t.Errorf("random_weights = false for the tiny model")
	}
	if mi.GetModel() == "" {
		t.Errorf("empty model")
	}
	if mi.GetLimits().GetMaxDocumentsPerRequest() == 0 {
		t.Errorf("limits.max_documents_per_request = 0")
	}
	if th := mi.GetBandThresholds(); !(th.GetStrong() > th.GetMedium()) {
		t.Errorf("band thresholds strong %v <= medium %v", th.GetStrong(), th.GetMedium())
	}
	t.Logf("model %q dtype %s attention %s devices %v params %d server %s limits {%v}",
		mi.GetModel(), mi.GetDtype(), mi.GetAttentionImplementation(), mi.GetDevices(),
		mi.GetParameters(), mi.GetServerVersion(), mi.GetLimits())
}

func TestRerankTexts(t *testing.T) {
	needServer(t)
	docs := []string{
		"Trail running shoe in bright red with a grippy sole.",
		"A leather boot for winter hiking.",
		"Recipe: tomato soup with basil.",
	}
	resp, err := client.RerankTexts(ctxT(t, 60*time.Second), "red running shoes", docs)
	if err != nil {
		t.Fatalf("RerankTexts: %v", err)
	}
	checkRanking(t, resp, lychee.TextDocuments(docs...), len(docs))
	if resp.GetModel() == "" {
		t.Errorf("response without model")
	}
	if u := resp.GetUsage(); u.GetPromptTokens() == 0 || u.GetComputedTokens() == 0 || u.GetImages() != 0 {
		t.Errorf("usage %v: want prompt and computed tokens > 0, no images", u)
	}
	if tm := resp.GetTimings(); tm.GetTotalMs() <= 0 {
		t.Errorf("timings %v: total_ms <= 0", tm)
	}
}

func TestRerankImages(t *testing.T) {
	needServer(t)
	docs := []*lychee.Document{
		lychee.NewDocument("red", lychee.Image(pngImage(t, 64, 64, red))),
		lychee.NewDocument("green", lychee.Image(pngImage(t, 64, 48, green))),
		lychee.NewDocument("blue", lychee.Image(pngImage(t, 40, 80, blue))),
	}
	resp, err := client.Rerank(ctxT(t, 60*time.Second), &lychee.RerankRequest{
		Query:     lychee.NewQuery(lychee.Text("a red square")),
		Documents: docs,
	})
	if err != nil {
		t.Fatalf("Rerank: %v", err)
	}
	checkRanking(t, resp, docs, len(docs))
	if got := resp.GetUsage().GetImages(); got != 3 {
		t.Errorf("usage.images = %d, want 3", got)
	}
}

func TestRerankMixed(t *testing.T) {
	needServer(t)
	redPNG := pngImage(t, 64, 64, red)
	docs := []*lychee.Document{
		lychee.NewDocument("text+image", lychee.Text("Red trail runner."), lychee.Image(redPNG)),
		lychee.NewDocument("image+text", lychee.Image(pngImage(t, 56, 56, blue)), lychee.Text("Blue sandal.")),
		lychee.NewDocument("text", lychee.Text("Green rain jacket, "), lychee.Text("waterproof.")),
		lychee.NewDocument("image", lychee.Image(pngImage(t, 64, 64, green))),
	}
	// A multimodal query too: text then image.
	req := &lychee.RerankRequest{
		Query:           lychee.NewQuery(lychee.Text("shoes like this one:"), lychee.Image(redPNG)),
		Documents:       docs,
		Instruction:     "Given a product photo and description, find matching products.",
		ReturnDocuments: true,
	}
	resp, err := client.Rerank(ctxT(t, 60*time.Second), req)
	if err != nil {
		t.Fatalf("Rerank: %v", err)
	}
	checkRanking(t, resp, docs, len(docs))
	for _, r := range resp.GetResults() {
		if !proto.Equal(r.GetDocument(), docs[r.GetIndex()]) {
			t.Errorf("return_documents: result %d echoes %v, want the document sent", r.GetIndex(), r.GetDocument())
		}
	}
	if got := resp.GetUsage().GetImages(); got != 4 { // 1 in the query + 3 in documents
		t.Errorf("usage.images = %d, want 4", got)
	}

	// top_n keeps the best N of the same ranking.
	req.TopN, req.ReturnDocuments = 2, false
	top, err := client.Rerank(ctxT(t, 60*time.Second), req)
	if err != nil {
		t.Fatalf("Rerank top_n=2: %v", err)
	}
	checkRanking(t, top, docs, 2)
	for i, r := range top.GetResults() {
		if r.GetDocument() != nil {
			t.Errorf("document echoed without return_documents")
		}
		if full := resp.GetResults()[i]; r.GetIndex() != full.GetIndex() {
			t.Errorf("top_n result %d: index %d, full ranking has %d", i, r.GetIndex(), full.GetIndex())
		}
	}
}

func candidates(n int) []*lychee.Document {
	docs := make([]*lychee.Document, n)
	for i := range docs {
		docs[i] = lychee.NewDocument(fmt.Sprintf("cand-%03d", i),
			lychee.Text(fmt.Sprintf("Candidate %d: a product description, variant %d, size %d.", i, i*7%13, i%5)))
	}
	return docs
}

func TestRerankStream100(t *testing.T) {
	needServer(t)
	const n, chunk = 100, 7
	docs := candidates(n)
	streamed := make(map[uint32]float32, n)
	var order []uint32
	final, err := client.RerankStream(ctxT(t, 90*time.Second),
		&lychee.StreamOptions{Query: lychee.NewQuery(lychee.Text("a product in size 3"))},
		lychee.Chunks(docs, chunk),
		func(r *lychee.RerankResult) error {
			if _, dup := streamed[r.GetIndex()]; dup {
				return fmt.Errorf("index %d scored twice", r.GetIndex())
			}
			if int(r.GetIndex()) < n && r.GetId() != docs[r.GetIndex()].GetId() {
				return fmt.Errorf("scored index %d has id %q, want %q", r.GetIndex(), r.GetId(), docs[r.GetIndex()].GetId())
			}
			streamed[r.GetIndex()] = r.GetScore()
			order = append(order, r.GetIndex())
			return nil
		})
	if err != nil {
		t.Fatalf("RerankStream: %v", err)
	}
	if len(streamed) != n {
		t.Fatalf("%d scored messages, want %d", len(streamed), n)
	}
	checkRanking(t, final, docs, n)
	for _, r := range final.GetResults() {
		if s, ok := streamed[r.GetIndex()]; !ok || s != r.GetScore() {
			t.Errorf("index %d: streamed score %v (present %v), final %v", r.GetIndex(), s, ok, r.GetScore())
		}
	}
	t.Logf("streamed %d scores (first indices %v), final ranking top: %d %.4f",
		len(streamed), order[:min(10, len(order))], final.GetResults()[0].GetIndex(), final.GetResults()[0].GetScore())
}

func TestRerankStreamTopNAndCallbackError(t *testing.T) {
	needServer(t)
	docs := candidates(12)
	var scored int
	final, err := client.RerankStream(ctxT(t, 60*time.Second),
		&lychee.StreamOptions{Query: lychee.NewQuery(lychee.Text("variant 3")), TopN: 3},
		lychee.Chunks(docs, 5),
		func(*lychee.RerankResult) error { scored++; return nil })
	if err != nil {
		t.Fatalf("RerankStream: %v", err)
	}
	if scored != len(docs) {
		t.Errorf("%d scored messages, want %d (top_n applies to the ranking only)", scored, len(docs))
	}
	checkRanking(t, final, docs, 3)

	// The documents may also all come in the first message.
	final, err = client.RerankStream(ctxT(t, 60*time.Second),
		&lychee.StreamOptions{Query: lychee.NewQuery(lychee.Text("variant 3"))},
		lychee.Chunks(docs[:4], 0), nil)
	if err != nil {
		t.Fatalf("RerankStream (one message): %v", err)
	}
	checkRanking(t, final, docs[:4], 4)

	stop := errors.New("enough")
	_, err = client.RerankStream(ctxT(t, 60*time.Second),
		&lychee.StreamOptions{Query: lychee.NewQuery(lychee.Text("variant 3"))},
		lychee.Chunks(docs, 2),
		func(*lychee.RerankResult) error { return stop })
	if !errors.Is(err, stop) {
		t.Errorf("callback error: got %v, want %v", err, stop)
	}
}

// wantInvalid asserts err is INVALID_ARGUMENT naming field among its violations.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want INVALID_ARGUMENT on %s", field)
	}
	if c := status.Code(err); c != codes.InvalidArgument {
		t.Fatalf("code %v (%v), want InvalidArgument", c, err)
	}
	var inv *lychee.InvalidArgumentError
	if !errors.As(err, &inv) {
		t.Fatalf("errors.As(*InvalidArgumentError) false for %T: %v", err, err)
	}
	v, ok := inv.Violation(field)
	if !ok {
		t.Fatalf("violations %v do not name %s (error: %v)", inv.Fields(), field, err)
	}
	if v.Description == "" {
		t.Errorf("violation %s has no description", field)
	}
	t.Logf("%v", err)
}

func TestInvalidArgument(t *testing.T) {
	needServer(t)
	q := lychee.NewQuery(lychee.Text("query"))
	t.Run("EmptyTextPart", func(t *testing.T) {
		_, err := client.Rerank(ctxT(t, 30*time.Second), &lychee.RerankRequest{Query: q, Documents: []*lychee.Document{
			lychee.NewDocument("ok", lychee.Text("fine")),
			lychee.NewDocument("bad", lychee.Text("")),
		}})
		wantInvalid(t, err, "documents[1].parts[0].text")
	})
	t.Run("GarbageImage", func(t *testing.T) {
		_, err := client.Rerank(ctxT(t, 30*time.Second), &lychee.RerankRequest{Query: q, Documents: []*lychee.Document{
			lychee.NewDocument("bad", lychee.Image([]byte("this is not an image at all"))),
			lychee.NewDocument("ok", lychee.Text("fine")),
		}})
		wantInvalid(t, err, "documents[0].parts[0].image")
	})
	t.Run("DocumentWithoutParts", func(t *testing.T) {
		_, err := client.Rerank(ctxT(t, 30*time.Second), &lychee.RerankRequest{Query: q, Documents: []*lychee.Document{
			lychee.NewDocument("ok", lychee.Text("fine")),
			lychee.NewDocument("ok", lychee.Text("fine")),
			lychee.NewDocument("empty"),
		}})
		wantInvalid(t, err, "documents[2].parts")
	})
	t.Run("StreamEmptyTextPart", func(t *testing.T) {
		// Indices (and field paths) count documents across the whole stream:
		// the 4th document, sent second in the second message, is documents[3].
		docs := candidates(5)
		docs[3] = lychee.NewDocument("bad", lychee.Text(""))
		_, err := client.RerankStream(ctxT(t, 30*time.Second),
			&lychee.StreamOptions{Query: q}, lychee.Chunks(docs, 2), nil)
		wantInvalid(t, err, "documents[3].parts[0].text")
	})
	t.Run("StreamWithoutOptions", func(t *testing.T) {
		_, err := client.RerankStream(ctxT(t, 30*time.Second), nil, lychee.Chunks(candidates(2), 1), nil)
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("code %v (%v), want InvalidArgument", status.Code(err), err)
		}
		t.Logf("%v", err)
	})
}

func TestDeadline(t *testing.T) {
	needServer(t)
	docs := candidates(100)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := client.Rerank(ctx, &lychee.RerankRequest{Query: lychee.NewQuery(lychee.Text("q")), Documents: docs})
	if c := status.Code(err); c != codes.DeadlineExceeded {
		t.Fatalf("1 ms deadline: code %v (%v), want DeadlineExceeded", c, err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("deadline error took %v", el)
	}
	// The server dropped the work and still serves.
	resp, err := client.RerankTexts(ctxT(t, 60*time.Second), "q", []string{"a", "b"})
	if err != nil {
		t.Fatalf("after the deadline: %v", err)
	}
	checkRanking(t, resp, lychee.TextDocuments("a", "b"), 2)
}

func TestDefaultTimeout(t *testing.T) {
	needServer(t)
	c, err := lychee.New(target, lychee.WithDefaultTimeout(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Rerank(context.Background(), &lychee.RerankRequest{Query: lychee.NewQuery(lychee.Text("q")), Documents: candidates(100)})
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("default 1 ms timeout: code %v (%v), want DeadlineExceeded", code, err)
	}
}

func TestDial(t *testing.T) {
	needServer(t)
	c, err := lychee.Dial(ctxT(t, 10*time.Second), "dns:///"+target, lychee.WithoutRetry(), lychee.WithHealthCheck(""))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	mi, err := c.GetModelInfo(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatalf("GetModelInfo over dns:/// with health checking: %v", err)
	}
	if !mi.GetRandomWeights() {
		t.Errorf("random_weights = false")
	}
	// Nothing listens on port 1: Dial gives up when its context ends.
	if _, err := lychee.Dial(ctxT(t, 300*time.Millisecond), "127.0.0.1:1"); err == nil {
		t.Errorf("Dial to a closed port succeeded")
	}
}
