package lychee

import (
	"context"
	"errors"
	"io"
	"iter"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	lycheev1 "github.com/lychee-ai/lychee-grpc/clients/go/lycheev1"
)

// Rerank scores every document of req against its query; results come back
// best first (index = position in req.Documents).
func (c *Client) Rerank(ctx context.Context, req *RerankRequest, opts ...grpc.CallOption) (*RerankResponse, error) {
	ctx, cancel := c.withDefaultTimeout(ctx)
	defer cancel()
	resp, err := c.rpc.Rerank(ctx, req, opts...)
	return resp, wrapError(err)
}

// RerankTexts reranks text documents against a text query with the server's
// default instruction, returning all results best first; a result's Index is
// the position of its document in docs.
func (c *Client) RerankTexts(ctx context.Context, query string, docs []string, opts ...grpc.CallOption) (*RerankResponse, error) {
	return c.Rerank(ctx, &lycheev1.RerankRequest{
		Query:     NewQuery(Text(query)),
		Documents: TextDocuments(docs...),
	}, opts...)
}

// GetModelInfo returns the loaded model, its limits and the server's defaults.
func (c *Client) GetModelInfo(ctx context.Context, opts ...grpc.CallOption) (*GetModelInfoResponse, error) {
	ctx, cancel := c.withDefaultTimeout(ctx)
	defer cancel()
	resp, err := c.rpc.GetModelInfo(ctx, &lycheev1.GetModelInfoRequest{}, opts...)
	return resp, wrapError(err)
}

// RerankStream opens a RerankStream call: the first message carries options
// (the query, instruction, top_n...) together with the first chunk, then every
// further chunk of chunks is sent as one message, then the stream is
// half-closed. Meanwhile onScored (may be nil) is called, from the calling
// goroutine, with each document's result as soon as the server has scored it;
// result indices follow the order in which documents were sent, from 0.
// RerankStream returns the final ranking (best first, top_n applied).
//
// If onScored returns an error, the call is cancelled and that error is
// returned as is. chunks runs on another goroutine; it is not called again once
// RerankStream has returned, and RerankStream waits for it to return, so an
// iterator that blocks on outside input must also watch ctx.
func (c *Client) RerankStream(ctx context.Context, options *StreamOptions, chunks iter.Seq[[]*Document],
	onScored func(*RerankResult) error, opts ...grpc.CallOption) (*RerankResponse, error) {
	ctx, cancel := c.withDefaultTimeout(ctx)
	defer cancel()
	stream, err := c.rpc.RerankStream(ctx, opts...)
	if err != nil {
		return nil, wrapError(err)
	}

	sendDone := make(chan error, 1)
	go func() { sendDone <- sendChunks(stream, options, chunks) }()

	var (
		final   *RerankResponse
		recvErr error
		cbErr   error
	)
recv:
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			recvErr = err
			break
		}
		switch ev := msg.GetEvent().(type) {
		case *lycheev1.RerankStreamResponse_Scored:
			if onScored != nil {
				if err := onScored(ev.Scored); err != nil {
					cbErr = err
					break recv
				}
			}
		case *lycheev1.RerankStreamResponse_Ranking:
			final = ev.Ranking
		}
	}
	cancel() // unblocks the sender if the call ended early
	sendErr := <-sendDone

	switch {
	case cbErr != nil:
		return nil, cbErr
	case sendErr != nil && !errors.Is(sendErr, io.EOF) && !isCancellation(sendErr):
		// Failure made by the client while sending (e.g. a message over the
		// size limit): the receive side only sees the stream aborted.
		return nil, wrapError(sendErr)
	case recvErr != nil:
		return nil, wrapError(recvErr)
	case final == nil:
		return nil, status.Error(codes.Internal, "lychee: RerankStream ended without a ranking")
	}
	return final, nil
}

func sendChunks(stream grpc.BidiStreamingClient[lycheev1.RerankStreamRequest, lycheev1.RerankStreamResponse],
	options *StreamOptions, chunks iter.Seq[[]*Document]) error {
	first := true
	if chunks != nil {
		for chunk := range chunks {
			msg := &lycheev1.RerankStreamRequest{Documents: chunk}
			if first {
				msg.Options, first = options, false
			}
			if err := stream.Send(msg); err != nil {
				return err // io.EOF: the server ended the call; Recv has its status
			}
		}
	}
	if first {
		if err := stream.Send(&lycheev1.RerankStreamRequest{Options: options}); err != nil {
			return err
		}
	}
	return stream.CloseSend()
}

func isCancellation(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded:
		return true
	}
	return false
}
