"""The HTTP interface: thin handlers that parse a request, call a service and render its answer."""
