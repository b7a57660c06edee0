"""Webhook endpoints and the delivery outbox (secret key)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["webhooks"])
