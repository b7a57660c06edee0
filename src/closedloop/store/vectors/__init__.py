"""Vectors beside the hot rows: the table, ANN indexes that follow it, the embedding job and
semantic search."""

from __future__ import annotations

from closedloop.store.vectors.index import IndexManager, VectorIndex
from closedloop.store.vectors.job import EmbeddingJob, EmbedParams, EmbedStats
from closedloop.store.vectors.search import Hit, SearchFilter, search
from closedloop.store.vectors.table import (
    NewVector,
    delete_for_interactions,
    delete_for_refs,
    delete_for_users,
    delete_older_than,
    insert_vectors,
)

__all__ = [
    "EmbedParams",
    "EmbedStats",
    "EmbeddingJob",
    "Hit",
    "IndexManager",
    "NewVector",
    "SearchFilter",
    "VectorIndex",
    "delete_for_interactions",
    "delete_for_refs",
    "delete_for_users",
    "delete_older_than",
    "insert_vectors",
    "search",
]
