"""Read models built only from the event stream: queues and their lines, the activity log, customers.

``ProjectionRunner`` creates, follows and rebuilds them in the events' own database (a long catch-up in
``python -m cli.processes projection-worker`` processes beside its own, see projections/runner.py);
``projections.queries`` reads them for the interfaces. Nothing is imported here: `projections.names`
loads without the rest (the CLI's parser checks names with it).
"""
