"""Knowledge-base entries, recall, and documents flagged for re-indexing."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["knowledge"])
