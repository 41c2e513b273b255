package lychee

import (
	"iter"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// Aliases of the generated lychee.v1 messages, so callers need only this package.
type (
	Part                 = lycheev1.Part
	Query                = lycheev1.Query
	Document             = lycheev1.Document
	RerankRequest        = lycheev1.RerankRequest
	RerankResponse       = lycheev1.RerankResponse
	RerankResult         = lycheev1.RerankResult
	StreamOptions        = lycheev1.StreamOptions
	Usage                = lycheev1.Usage
	Timings              = lycheev1.Timings
	GetModelInfoResponse = lycheev1.GetModelInfoResponse
	Limits               = lycheev1.Limits
	RelevanceBand        = lycheev1.RelevanceBand
	Truncation           = lycheev1.Truncation
	ExplainRequest       = lycheev1.ExplainRequest
	ExplainResponse      = lycheev1.ExplainResponse
	Fragment             = lycheev1.Fragment
	FragmentSource       = lycheev1.FragmentSource
)

// What the server does with a document whose text is over the token limit.
const (
	// TruncationDefault leaves it to the server (GetModelInfo().Limits.DefaultTruncation).
	TruncationDefault = lycheev1.Truncation_TRUNCATION_UNSPECIFIED
	// TruncationNone refuses the request with INVALID_ARGUMENT naming the document.
	TruncationNone = lycheev1.Truncation_TRUNCATION_NONE
	// TruncationEnd keeps the first tokens of the text that fit (images are never cut);
	// the result is marked Truncated.
	TruncationEnd = lycheev1.Truncation_TRUNCATION_END
)

// Which side of an explained pair a Fragment belongs to.
const (
	FragmentFromQuery    = lycheev1.FragmentSource_FRAGMENT_SOURCE_QUERY
	FragmentFromDocument = lycheev1.FragmentSource_FRAGMENT_SOURCE_DOCUMENT
)

// Relevance bands (thresholds are the server's; see GetModelInfo).
const (
	BandUnspecified = lycheev1.RelevanceBand_RELEVANCE_BAND_UNSPECIFIED
	BandWeak        = lycheev1.RelevanceBand_RELEVANCE_BAND_WEAK
	BandMedium      = lycheev1.RelevanceBand_RELEVANCE_BAND_MEDIUM
	BandStrong      = lycheev1.RelevanceBand_RELEVANCE_BAND_STRONG
)

// Text returns a text part. The server rejects empty text parts.
func Text(s string) *Part {
	return &lycheev1.Part{Content: &lycheev1.Part_Text{Text: s}}
}

// Image returns an image part holding encoded image bytes (JPEG, PNG, WebP or
// GIF; the server detects the format). The slice is not copied.
func Image(encoded []byte) *Part {
	return &lycheev1.Part{Content: &lycheev1.Part_Image{Image: encoded}}
}

// NewQuery returns a query made of parts, in order.
func NewQuery(parts ...*Part) *Query {
	return &lycheev1.Query{Parts: parts}
}

// NewDocument returns a document with the caller's id (echoed on its result;
// may be empty) made of parts, in order.
func NewDocument(id string, parts ...*Part) *Document {
	return &lycheev1.Document{Id: id, Parts: parts}
}

// TextDocuments returns one single-text-part document per string, with empty ids.
func TextDocuments(texts ...string) []*Document {
	docs := make([]*Document, len(texts))
	for i, t := range texts {
		docs[i] = NewDocument("", Text(t))
	}
	return docs
}

// Chunks yields docs in consecutive chunks of at most size documents (size < 1
// means a single chunk), for RerankStream.
func Chunks(docs []*Document, size int) iter.Seq[[]*Document] {
	return func(yield func([]*Document) bool) {
		if size < 1 {
			size = len(docs)
		}
		for start := 0; start < len(docs); start += size {
			end := min(start+size, len(docs))
			if !yield(docs[start:end]) {
				return
			}
		}
	}
}
