"""LangChain's and LlamaIndex's Cohere rerankers, driven unmodified (only their documented
base_url; the api key is the server's bearer token), over their own document types. Each score
equals the gRPC score of the text that integration sends for the document."""

from __future__ import annotations

from conftest import TITLES, TOKEN, TOLERANCE


def test_langchain_cohere_rerank_compresses_real_documents(server):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    documents = [Document(page_content=t, metadata={"sku": f"S{i}"}) for i, t in enumerate(TITLES)]
    reranker = CohereRerank(model="rerank-v3.5", cohere_api_key=TOKEN, base_url=server.base_url, top_n=3)
    compressed = reranker.compress_documents(documents, "denim jacket")
    expected = server.scores("denim jacket", [[t] for t in TITLES])
    best = sorted(expected, key=lambda i: -expected[i])[:3]
    assert [d.metadata["sku"] for d in compressed] == [f"S{i}" for i in best]
    for doc, i in zip(compressed, best):
        assert abs(doc.metadata["relevance_score"] - expected[i]) <= TOLERANCE


def test_llama_index_cohere_rerank_postprocesses_real_nodes(server):
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    nodes = [NodeWithScore(node=TextNode(text=t, metadata={"shop": "lychee"}), score=0.0) for t in TITLES]
    reranker = CohereRerank(model="rerank-v3.5", api_key=TOKEN, base_url=server.base_url, top_n=2)
    ranked = reranker.postprocess_nodes(nodes, QueryBundle("grey sofa"))
    # The integration sends each node's text as it embeds it (metadata included): the reference
    # scores exactly those texts.
    sent = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    expected = server.scores("grey sofa", [[t] for t in sent])
    best = sorted(expected, key=lambda i: -expected[i])[:2]
    assert [n.node.get_content() for n in ranked] == [TITLES[i] for i in best]
    for node, i in zip(ranked, best):
        assert abs(node.score - expected[i]) <= TOLERANCE
