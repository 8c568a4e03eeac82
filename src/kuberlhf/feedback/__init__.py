"""Human feedback: candidates ranked in Label Studio (or files), rankings into preference pairs."""
