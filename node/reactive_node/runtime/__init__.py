"""The node process around the pure core: the node shell, its HTTP app and
process entry, configuration, metrics, state stores, the Kubernetes API client,
the token webhook, the decision file and injected faults."""
