// Package lychee is the Go client of lychee-grpc, the multimodal reranking
// service (lychee.v1.RerankService, model Lychee-Rerank-MM).
//
// A query and each document are ordered lists of parts; a part is text or an
// encoded image (JPEG, PNG, WebP or GIF bytes):
//
//	c, err := lychee.New("dns:///lychee.search.svc.cluster.local:50051",
//		lychee.WithDefaultTimeout(2*time.Second))
//	if err != nil { ... }
//	defer c.Close()
//
//	resp, err := c.Rerank(ctx, &lychee.RerankRequest{
//		Query: lychee.NewQuery(lychee.Text("red running shoes")),
//		Documents: []*lychee.Document{
//			lychee.NewDocument("sku-1", lychee.Text("Trail runner, red"), lychee.Image(png)),
//			lychee.NewDocument("sku-2", lychee.Text("Leather boots")),
//		},
//		TopN: 10,
//	})
//	for _, r := range resp.GetResults() { // best first
//		fmt.Println(r.GetId(), r.GetScore(), r.GetBand())
//	}
//
// Connections are insecure by default (in-cluster plaintext); WithTLS turns on
// TLS. Calls that fail with UNAVAILABLE (model loading, server draining, pod
// gone) are retried by gRPC according to the service config built by New; no
// other code is retried. Targets of the form dns:///host:port are resolved to
// every address (a headless Kubernetes Service) and balanced round_robin.
//
// INVALID_ARGUMENT comes back as *InvalidArgumentError, which lists the
// offending field paths (e.g. "documents[3].parts[0].image"):
//
//	var inv *lychee.InvalidArgumentError
//	if errors.As(err, &inv) {
//		for _, v := range inv.Violations { log.Printf("%s: %s", v.Field, v.Description) }
//	}
//
// An overloaded server answers RESOURCE_EXHAUSTED with a retry delay, which
// comes back as *OverloadedError (not retried by the client); a missing or
// wrong bearer token (WithBearerToken) comes back as *UnauthenticatedError:
//
//	var over *lychee.OverloadedError
//	if errors.As(err, &over) { time.Sleep(over.RetryAfter) } // then try once more, or shed
//	if errors.Is(err, lychee.ErrUnauthenticated) { ... }
//
// All other failures are gRPC status errors; use status.Code(err).
package lychee
