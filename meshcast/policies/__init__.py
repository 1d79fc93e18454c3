"""Traffic and observability policies: `targetRef` selection, the schemas of each kind, and the rule that decides
which apply and how several merge (`resolve`). Importing this package registers the policy resource types."""

from meshcast.policies import kinds as kinds
from meshcast.policies.resolve import Effective, Policy, resolve
from meshcast.policies.targetref import ProxyFacts, TargetRef

__all__ = ["Effective", "Policy", "ProxyFacts", "TargetRef", "kinds", "resolve"]
