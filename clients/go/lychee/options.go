package lychee

// RerankOption sets one optional field of a request built by NewRerankRequest
// or NewStreamOptions; the same options serve both.
type RerankOption func(*rerankParams)

// rerankParams holds the fields RerankRequest and StreamOptions share.
type rerankParams struct {
	instruction     string
	topN            uint32
	returnDocuments bool
	truncation      Truncation
	minScore        *float32
	maxTokens       uint32
}

// WithInstruction sets the task instruction (default: the server's).
func WithInstruction(s string) RerankOption { return func(p *rerankParams) { p.instruction = s } }

// WithTopN keeps the best n results (0: all). In a stream it applies to the
// final ranking only.
func WithTopN(n uint32) RerankOption { return func(p *rerankParams) { p.topN = n } }

// WithReturnDocuments echoes each document on its result.
func WithReturnDocuments() RerankOption { return func(p *rerankParams) { p.returnDocuments = true } }

// WithTruncation picks what happens to a document over the token limit:
// TruncationNone refuses the request, TruncationEnd cuts the text (and marks
// the result Truncated), TruncationDefault leaves it to the server.
func WithTruncation(t Truncation) RerankOption { return func(p *rerankParams) { p.truncation = t } }

// WithMinScore leaves out results scoring below s; the response counts them in
// DroppedDocuments. In a stream it applies to the final ranking only.
func WithMinScore(s float32) RerankOption { return func(p *rerankParams) { p.minScore = &s } }

// WithMaxTokensPerDocument lowers the per-document token limit for this
// request (0: the server's; it can never be raised above the server's).
func WithMaxTokensPerDocument(n uint32) RerankOption {
	return func(p *rerankParams) { p.maxTokens = n }
}

func collect(opts []RerankOption) rerankParams {
	var p rerankParams
	for _, o := range opts {
		o(&p)
	}
	if p.minScore != nil {
		// A fresh copy: the option value may be reused, and messages are mutable.
		v := *p.minScore
		p.minScore = &v
	}
	return p
}

// NewRerankRequest builds a request for Client.Rerank, e.g.
//
//	req := lychee.NewRerankRequest(lychee.NewQuery(lychee.Text(q)), docs,
//		lychee.WithTopN(10), lychee.WithMinScore(0.5), lychee.WithTruncation(lychee.TruncationEnd))
func NewRerankRequest(query *Query, docs []*Document, opts ...RerankOption) *RerankRequest {
	p := collect(opts)
	return &RerankRequest{
		Query:                query,
		Documents:            docs,
		Instruction:          p.instruction,
		TopN:                 p.topN,
		ReturnDocuments:      p.returnDocuments,
		Truncation:           p.truncation,
		MinScore:             p.minScore,
		MaxTokensPerDocument: p.maxTokens,
	}
}

// NewStreamOptions builds the options of Client.RerankStream from the same
// options as NewRerankRequest.
func NewStreamOptions(query *Query, opts ...RerankOption) *StreamOptions {
	p := collect(opts)
	return &StreamOptions{
		Query:                query,
		Instruction:          p.instruction,
		TopN:                 p.topN,
		ReturnDocuments:      p.returnDocuments,
		Truncation:           p.truncation,
		MinScore:             p.minScore,
		MaxTokensPerDocument: p.maxTokens,
	}
}
