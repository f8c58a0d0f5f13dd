"""The service console (pulse console): streams.console.app."""
