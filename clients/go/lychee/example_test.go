package lychee_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"google.golang.org/grpc/status"

	"github.com/lychee-ai/lychee-grpc/clients/go/lychee"
)

// Compiled (not run) examples, kept in step with README.md.

func ExampleClient_Rerank() {
	client, err := lychee.New("dns:///lychee.search.svc.cluster.local:50051",
		lychee.WithDefaultTimeout(2*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var photo1, photo2 []byte // encoded JPEG/PNG/WebP/GIF
	resp, err := client.Rerank(ctx, &lychee.RerankRequest{
		Query: lychee.NewQuery(lychee.Text("red running shoes")),
		Documents: []*lychee.Document{
			lychee.NewDocument("sku-1", lychee.Text("Trail runner, red"), lychee.Image(photo1)),
			lychee.NewDocument("sku-2", lychee.Image(photo2)),
		},
		TopN: 10,
	})
	var invalid *lychee.InvalidArgumentError
	switch {
	case errors.As(err, &invalid):
		for _, v := range invalid.Violations {
			log.Printf("bad request field %s: %s", v.Field, v.Description)
		}
	case err != nil:
		log.Printf("rerank failed: %v (code %v)", err, status.Code(err))
	default:
		for _, r := range resp.GetResults() {
			fmt.Println(r.GetId(), r.GetScore(), r.GetBand())
		}
	}
}

func ExampleClient_RerankStream() {
	client, err := lychee.New("localhost:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	docs := lychee.TextDocuments("first candidate", "second candidate", "third candidate")
	final, err := client.RerankStream(context.Background(),
		&lychee.StreamOptions{Query: lychee.NewQuery(lychee.Text("query")), TopN: 2},
		lychee.Chunks(docs, 2),
		func(r *lychee.RerankResult) error {
			fmt.Println("scored", r.GetIndex(), r.GetScore())
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range final.GetResults() {
		fmt.Println(r.GetIndex(), r.GetScore())
	}
}

func ExampleOverloadedError() {
	client, err := lychee.New("dns:///lychee.search.svc.cluster.local:50051",
		lychee.WithTLS(nil), lychee.WithBearerToken("token-from-your-secret-store"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req := lychee.NewRerankRequest(lychee.NewQuery(lychee.Text("red running shoes")),
		lychee.TextDocuments("Trail runner in bright red", "Leather winter boots"),
		lychee.WithTopN(1), lychee.WithTruncation(lychee.TruncationEnd))
	resp, err := client.Rerank(ctx, req)
	var over *lychee.OverloadedError
	if errors.As(err, &over) {
		// The server's queue is full: wait what it asks, once, if the deadline leaves room.
		if dl, _ := ctx.Deadline(); time.Until(dl) > over.RetryAfter {
			time.Sleep(over.RetryAfter)
			resp, err = client.Rerank(ctx, req)
		}
	}
	if errors.Is(err, lychee.ErrUnauthenticated) {
		log.Fatal("check the bearer token")
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetResults()[0].GetIndex())
}
