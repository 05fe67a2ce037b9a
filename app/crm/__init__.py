"""The request's CRM context as one typed view: every piece classed by who wrote it."""

from app.crm.record import CrmRecord, Flatten, Trust, flatten, trust_of

__all__ = ["CrmRecord", "Flatten", "Trust", "flatten", "trust_of"]
