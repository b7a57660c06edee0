"""Rules, their firings, and the effect of each firing (secret key)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["rules"])
