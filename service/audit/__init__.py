"""Live precision audit: shadow FP32 re-runs of sampled reduced-precision requests.

``budget`` (device time share), ``shadow`` (lowest-priority background runs), ``window`` (rolling
agreement, the builder's measure), ``keep`` (bounded store of disagreeing samples), ``audit``
(the service-facing object and its two hooks).
"""

from service.audit.audit import LiveAgreement, PrecisionAudit

__all__ = ["LiveAgreement", "PrecisionAudit"]
