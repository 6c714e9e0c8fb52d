"""Local mode: a loop of node processes on this machine (`reactive-loop run`),
its run file, views, web page, target injection and local chaos."""
