"""LogStore's Python clients: Admin, Producer and Consumer over gRPC."""
