"""lychee-grpc: multimodal reranking with Lychee-Rerank-MM over gRPC."""

__version__ = "0.1.0"
