"""reactive-loop node: a process that round-trips to peers and keeps its state durable."""
