"""Dataset exports: fine-tuning JSONL, preference pairs, Parquet (secret key)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["exports"])
