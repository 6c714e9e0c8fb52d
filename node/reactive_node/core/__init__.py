"""The node's pure core: the contract, the wire codec, the protocol, topologies,
behaviours, the simulation and the chaos verdict. No I/O: nothing here imports
aiohttp, prometheus_client or the runtime, local or CLI layers
(docs/architecture.md, "Node package layout")."""
