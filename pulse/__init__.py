"""customer-pulse: settings, command line and the local development stack."""
