"""Read models built only from the event stream: queues and their lines, the activity log, customers.

``ProjectionRunner`` creates, follows and rebuilds them in the events' own database; ``projections.queries``
reads them for the CLI.
"""

from projections.runner import PROJECTION_NAMES, ProjectionRunner, UnknownProjectionError

__all__ = ["PROJECTION_NAMES", "ProjectionRunner", "UnknownProjectionError"]
