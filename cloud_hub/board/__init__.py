"""The hospital board: a web page of incoming patients per hospital, served by the hub's HTTP server."""
