"""Pure admission decisions: an AdmissionRequest (the decoded `request` of an AdmissionReview, v1 or
v1beta1) and a read-only Snapshot in, a Decision out.

No I/O, no clock and no randomness except what the caller injects (`now`, `nonce`), so every webhook
replica answers the same request the same way and tests can pin the answer. A request that cannot be
decoded yields a Decision, never an exception: binding and raw SELinux validation deny it (code 400),
recording and exec tagging let it through unchanged with a warning.
"""

from webhooks.decisions.binding import decide_binding
from webhooks.decisions.decision import Decision
from webhooks.decisions.execmetadata import decide_exec_metadata
from webhooks.decisions.profile_binding import decide_profile_binding
from webhooks.decisions.raw_selinux import decide_raw_selinux
from webhooks.decisions.recording import decide_recording, random_nonce

__all__ = [
    "Decision",
    "decide_binding",
    "decide_exec_metadata",
    "decide_profile_binding",
    "decide_raw_selinux",
    "decide_recording",
    "random_nonce",
]
