// Command lychee-rerank-example reranks documents against a query with the
// lychee-grpc service and prints the ranking, best first.
//
//	lychee-rerank-example -target dns:///lychee.search.svc.cluster.local:50051 \
//	    -query "red running shoes" "Trail runner, red" "Leather boots" @photo.png
//
// Each argument is a text document, except "@path" which is an image document
// read from the file (JPEG, PNG, WebP or GIF).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lychee-ai/lychee-grpc/clients/go/lychee"
)

func main() {
	target := flag.String("target", "localhost:50051", `server address: "host:port" or "dns:///host:port" (round_robin over every address)`)
	query := flag.String("query", "", "query text (required)")
	instruction := flag.String("instruction", "", "task instruction (empty: the server's default)")
	topN := flag.Uint("top-n", 0, "return only the best N results (0: all)")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of the call")
	useTLS := flag.Bool("tls", false, "use TLS (system roots)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -query TEXT [flags] DOC... (DOC = text, or @file for an image)\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *query == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}

	docs := make([]*lychee.Document, flag.NArg())
	for i, arg := range flag.Args() {
		id := fmt.Sprintf("doc-%d", i)
		if path, ok := strings.CutPrefix(arg, "@"); ok {
			img, err := os.ReadFile(path)
			if err != nil {
				log.Fatal(err)
			}
			docs[i] = lychee.NewDocument(id, lychee.Image(img))
		} else {
			docs[i] = lychee.NewDocument(id, lychee.Text(arg))
		}
	}

	opts := []lychee.Option{lychee.WithDefaultTimeout(*timeout)}
	if *useTLS {
		opts = append(opts, lychee.WithTLS(nil))
	}
	client, err := lychee.New(*target, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	resp, err := client.Rerank(ctx, &lychee.RerankRequest{
		Query:       lychee.NewQuery(lychee.Text(*query)),
		Documents:   docs,
		Instruction: *instruction,
		TopN:        uint32(*topN),
	})
	var invalid *lychee.InvalidArgumentError
	if errors.As(err, &invalid) {
		for _, v := range invalid.Violations {
			log.Printf("invalid %s: %s", v.Field, v.Description)
		}
		log.Fatal(invalid.Message)
	}
	if err != nil {
		log.Fatal(err)
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "RANK\tSCORE\tBAND\tID\tDOCUMENT")
	for rank, r := range resp.GetResults() {
		band := strings.TrimPrefix(r.GetBand().String(), "RELEVANCE_BAND_")
		fmt.Fprintf(w, "%d\t%.4f\t%s\t%s\t%s\n", rank+1, r.GetScore(), band, r.GetId(), flag.Arg(int(r.GetIndex())))
	}
	w.Flush()
	fmt.Printf("model %s, %.1f ms\n", resp.GetModel(), resp.GetTimings().GetTotalMs())
}
