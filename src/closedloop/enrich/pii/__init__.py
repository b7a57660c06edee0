"""PII redaction of the ingest path: structured entities by regex + checksum, names and places
by lexicon + context, replaced by mask, keyed hash or drop (see :class:`PiiRedactor`)."""

from closedloop.enrich.pii._names import warm
from closedloop.enrich.pii.redactor import (
    ENTITY_TYPES,
    EntityType,
    Mode,
    PiiParams,
    PiiRedactor,
    Span,
)

__all__ = ["ENTITY_TYPES", "EntityType", "Mode", "PiiParams", "PiiRedactor", "Span", "warm"]
