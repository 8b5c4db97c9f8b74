"""gRPC plumbing shared by the servers and the clients (private)."""
