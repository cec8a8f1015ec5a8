"""Workers that pull requests from NATS and do the work: the model workers and the NSQL worker."""
