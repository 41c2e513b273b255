package lychee

import (
	"context"

	"google.golang.org/grpc"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// Explain scores one query-document pair and attributes the score to the
// fragments of its texts (words or short phrases) and to the cells of a grid
// laid over each image, by occlusion: a fragment's Attribution is the full
// score minus the score without it (positive: it raised the score). The
// server bounds the fragments per call (GetModelInfo().Limits.MaxExplainFragments).
func (c *Client) Explain(ctx context.Context, req *ExplainRequest, opts ...grpc.CallOption) (*ExplainResponse, error) {
	ctx, cancel := c.withDefaultTimeout(ctx)
	defer cancel()
	resp, err := c.rpc.Explain(ctx, req, opts...)
	return resp, wrapError(err)
}

// ExplainTexts explains the score of a text document against a text query,
// with the server's default instruction; only the document's fragments are
// attributed.
func (c *Client) ExplainTexts(ctx context.Context, query, document string, opts ...grpc.CallOption) (*ExplainResponse, error) {
	return c.Explain(ctx, &lycheev1.ExplainRequest{
		Query:    NewQuery(Text(query)),
		Document: NewDocument("", Text(document)),
	}, opts...)
}
